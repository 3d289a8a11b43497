"""Plugin packages: a folder or zip with ``plugin.toml`` and the plugin's Python modules.

``plugin.toml``::

    name = "digits"                       # a-z0-9._- (the plugin's name)
    version = "1.0.0"                     # a-z0-9._-
    entrypoint = "digits_plugin:Digits"   # module:Class, a udl.Plugin subclass
    executor = "process"                  # async | thread | process (default thread)
    timeout_s = 5.0                       # default per-stage timeout, seconds

    [timeouts]                            # optional per-stage overrides
    load = 30.0
    preprocess = 2.0

The manager validates a package on upload with :func:`inspect_package`; the gateway
unpacks it with :func:`unpack`; the CLI builds one from a folder with :func:`pack`.
"""

from __future__ import annotations

import io
import tomllib
import zipfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from registry.archives import checked_zip, extract
from registry.errors import InvalidArgumentError
from registry.layout import NAME_PATTERN

MANIFEST = "plugin.toml"
#: Default upper bound of a plugin package, in bytes.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
Stage = Literal["load", "preprocess", "postprocess", "unload"]


class PluginManifest(BaseModel):
    """The content of ``plugin.toml``."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    version: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    #: ``module:Class``; the module is a file or package at the root of the package.
    entrypoint: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    executor: Literal["async", "thread", "process"] = "thread"
    #: Default timeout of every stage, in seconds.
    timeout_s: float = Field(default=5.0, gt=0, le=600)
    #: Per-stage overrides of ``timeout_s``.
    timeouts: dict[Stage, Annotated[float, Field(gt=0, le=600)]] = Field(default_factory=dict)

    @property
    def module(self) -> str:
        return self.entrypoint.split(":")[0]

    @property
    def class_name(self) -> str:
        return self.entrypoint.split(":")[1]

    def timeout(self, stage: Stage) -> float:
        return self.timeouts.get(stage, self.timeout_s)


def parse_manifest(text: str) -> PluginManifest:
    """Parse ``plugin.toml``; InvalidArgumentError saying what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InvalidArgumentError(f"{MANIFEST} is not valid TOML: {err}") from None
    try:
        return PluginManifest.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}" for e in err.errors()
        )
        raise InvalidArgumentError(f"invalid {MANIFEST}: {problems}") from None


def inspect_package(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> PluginManifest:
    """Validate a zipped plugin package and return its manifest.

    Checks: a zip within the size limit whose entries are safe (:mod:`registry.archives`),
    ``plugin.toml`` at the root and valid, and the entrypoint's module present in the package.
    """
    if len(data) > max_bytes:
        raise InvalidArgumentError(
            f"plugin package is {len(data)} bytes, over the limit of {max_bytes} bytes"
        )
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise InvalidArgumentError("plugin package is not a zip file")
    with checked_zip(data, max_bytes=max_bytes, what="plugin package") as archive:
        names = set(archive.namelist())
        if MANIFEST not in names:
            raise InvalidArgumentError(f"plugin package has no {MANIFEST} at its root")
        try:
            manifest = parse_manifest(archive.read(MANIFEST).decode())
        except UnicodeDecodeError:
            raise InvalidArgumentError(f"{MANIFEST} is not UTF-8 text") from None
    module_path = manifest.module.replace(".", "/")
    if f"{module_path}.py" not in names and f"{module_path}/__init__.py" not in names:
        raise InvalidArgumentError(
            f"entrypoint {manifest.entrypoint!r}: no {module_path}.py or "
            f"{module_path}/__init__.py in the package"
        )
    return manifest


def unpack(data: bytes, dest: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> PluginManifest:
    """Validate and extract a plugin package into ``dest`` (which must not exist yet)."""
    manifest = inspect_package(data, max_bytes)
    extract(data, dest, max_bytes=max_bytes, what="plugin package")
    return manifest


def pack(folder: Path) -> bytes:
    """Zip a plugin folder (deterministic order; caches and hidden files left out)."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise InvalidArgumentError(f"{folder} has no {MANIFEST}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if any(p.startswith(".") or p == "__pycache__" for p in rel.parts) or path.is_dir():
                continue
            info = zipfile.ZipInfo(rel.as_posix(), date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    data = buffer.getvalue()
    inspect_package(data)
    return data
