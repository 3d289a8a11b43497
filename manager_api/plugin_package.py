"""Validation of uploaded UDL plugin packages (zip files with a ``plugin.toml``)."""

from __future__ import annotations

import io
import re
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from manager_api.errors import BadUploadError
from registry.layout import NAME_PATTERN

_ENTRYPOINT = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*):([A-Za-z_]\w*)$")
_NAME = re.compile(NAME_PATTERN)
EXECUTORS = ("async", "thread", "process")


@dataclass(frozen=True)
class Manifest:
    """What ``plugin.toml`` declares."""

    name: str
    version: str
    entrypoint: str
    executor: str
    timeout_s: float


def validate_plugin_zip(path: Path, max_uncompressed: int) -> Manifest:
    """Check a plugin zip; BadUploadError with what to fix.

    ``plugin.toml`` (at the root, or under a ``[plugin]`` table) names ``name``, ``version``,
    ``entrypoint = "module:Class"``, optionally ``executor`` (async/thread/process) and
    ``timeout_s``; the entrypoint's module must be in the zip (``module.py`` or
    ``module/__init__.py``); no absolute or ``..`` paths; bounded uncompressed size.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise BadUploadError("the plugin package is not a zip file") from None
    with archive:
        infos = archive.infolist()
        total = 0
        names = set()
        for info in infos:
            p = PurePosixPath(info.filename)
            if p.is_absolute() or ".." in p.parts or "\\" in info.filename:
                raise BadUploadError(f"zip entry {info.filename!r} escapes the package directory")
            total += info.file_size
            names.add(info.filename.rstrip("/"))
        if total > max_uncompressed:
            raise BadUploadError(
                f"the plugin unpacks to {total} bytes, more than the limit of {max_uncompressed}"
            )
        if "plugin.toml" not in names:
            raise BadUploadError(
                "plugin.toml is missing at the root of the zip; it must set name, version and "
                'entrypoint = "module:Class"'
            )
        try:
            raw = tomllib.loads(archive.read("plugin.toml").decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise BadUploadError(f"plugin.toml is not valid TOML: {err}") from None
    table = raw.get("plugin", raw)
    if not isinstance(table, dict):
        raise BadUploadError("plugin.toml: [plugin] must be a table")
    name, version, entrypoint = (table.get(k) for k in ("name", "version", "entrypoint"))
    for key, value in (("name", name), ("version", version)):
        if not isinstance(value, str) or not _NAME.match(value):
            raise BadUploadError(
                f"plugin.toml: {key} {value!r} must match {NAME_PATTERN} (e.g. '1.0.0')"
            )
    if not isinstance(entrypoint, str) or not (match := _ENTRYPOINT.match(entrypoint)):
        raise BadUploadError(
            f'plugin.toml: entrypoint {entrypoint!r} must be "module:Class" (importable names)'
        )
    module = match.group(1).replace(".", "/")
    if f"{module}.py" not in names and f"{module}/__init__.py" not in names:
        raise BadUploadError(
            f"entrypoint module {match.group(1)!r} is not in the zip "
            f"(expected {module}.py or {module}/__init__.py)"
        )
    executor = table.get("executor", "thread")
    if executor not in EXECUTORS:
        raise BadUploadError(f"plugin.toml: executor {executor!r} must be one of {EXECUTORS}")
    timeout = table.get("timeout_s", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 600:
        raise BadUploadError(f"plugin.toml: timeout_s {timeout!r} must be a number in (0, 600]")
    assert isinstance(name, str) and isinstance(version, str)
    return Manifest(name, version, entrypoint, executor, float(timeout))


def build_plugin_zip(files: dict[str, str | bytes]) -> bytes:
    """A plugin zip from ``{path: content}`` (tests and examples)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in files.items():
            z.writestr(name, content)
    return buf.getvalue()
