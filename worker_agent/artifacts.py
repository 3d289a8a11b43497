"""Pull model artifacts into the local model repository, safely and atomically.

An artifact is a directory, a ``.tar.gz``/``.tgz``/``.tar`` or a ``.zip`` whose top level is
the content of one model version (e.g. ``model.py`` or ``saved_model.pb``), optionally
with the model's ``config.pbtxt``. Sources: ``file://`` (directory or archive),
``http(s)://`` (streamed; the manager's blob URLs get the bearer token) and ``s3://``
(needs the optional ``s3`` extra, i.e. boto3).

Every pull works in a staging dir ``<model-root>/.staging/`` and ends with one atomic
rename into ``<model-root>/<model>/<version>``. A rejected artifact (corrupt archive,
checksum mismatch, entries escaping the target, links, over the size limit) leaves
nothing behind. The version dir holds a marker file recording the URI and checksum, so a
restarted agent knows what is already on disk and does not download it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from worker_agent.errors import ArtifactError, ArtifactUnavailableError

log = logging.getLogger("worker_agent.artifacts")

MARKER = ".modelgate-artifact.json"
STAGING = ".staging"
_CHUNK = 1 << 20
_PROGRESS_EVERY = 5.0


@dataclass(frozen=True)
class PullResult:
    """What one :meth:`ArtifactStore.install` did."""

    path: Path
    bytes: int
    seconds: float


def tree_sha256(root: Path) -> str:
    """Checksum of a directory artifact: sha256 over sorted "relpath\\0sha256(file)\\n" lines."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MARKER):
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}\0{_file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_member(name: str, what: str) -> PurePosixPath:
    """Reject absolute names and any '..' component; return the normalised relative path."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ArtifactError(f"{what}: entry {name!r} is an absolute path")
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".")]
    if ".." in parts:
        raise ArtifactError(f"{what}: entry {name!r} escapes the target directory")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


class ArtifactStore:
    """The local model repository ``<model-root>/<model>/<version>/``."""

    def __init__(
        self,
        model_root: Path,
        *,
        max_bytes: int,
        manager_url: str | None = None,
        blob_token: str | None = None,
        http_timeout: float = 60.0,
        on_bytes: Callable[[str, int], None] | None = None,
    ) -> None:
        self.model_root = Path(model_root).resolve()
        self.max_bytes = max_bytes
        self.manager_url = manager_url
        self.blob_token = blob_token
        self.http_timeout = http_timeout
        self._on_bytes = on_bytes or (lambda scheme, n: None)

    # -- what is on disk -------------------------------------------------------------------

    def version_dir(self, model: str, version: int) -> Path:
        return self.model_root / model / str(version)

    def marker(self, model: str, version: int) -> dict[str, Any] | None:
        """The marker of an installed version, or None if it is not (completely) installed."""
        try:
            data = json.loads((self.version_dir(model, version) / MARKER).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def installed(self, model: str, version: int, uri: str, sha256: str | None) -> bool:
        """True if ``model@version`` is on disk from the same URI and checksum."""
        marker = self.marker(model, version)
        return marker is not None and marker.get("uri") == uri and marker.get("sha256") == sha256

    def installed_versions(self) -> list[tuple[str, int]]:
        """Every ``(model, version)`` with a complete install under the model root."""
        found: list[tuple[str, int]] = []
        if not self.model_root.is_dir():
            return found
        for model_dir in sorted(self.model_root.iterdir()):
            if not model_dir.is_dir() or model_dir.name.startswith("."):
                continue
            for vdir in model_dir.iterdir():
                if vdir.name.isdigit() and (vdir / MARKER).is_file():
                    found.append((model_dir.name, int(vdir.name)))
        return sorted(found)

    def remove(self, model: str, version: int) -> None:
        """Delete a version's files (and the model dir when no version is left)."""
        vdir = self.version_dir(model, version)
        if vdir.exists():
            trash = Path(tempfile.mkdtemp(dir=self._staging(), prefix="remove-"))
            os.rename(vdir, trash / "v")  # atomic: the version is gone at once
            shutil.rmtree(trash, ignore_errors=True)
        model_dir = self.model_root / model
        if model_dir.is_dir() and not any(p.name.isdigit() for p in model_dir.iterdir()):
            shutil.rmtree(model_dir, ignore_errors=True)
        self._drop_staging()

    # -- pulling ---------------------------------------------------------------------------

    def install(self, model: str, version: int, uri: str, sha256: str | None) -> PullResult:
        """Fetch, verify, extract and atomically place ``model@version``; blocking."""
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(dir=self._staging(), prefix=f"{model}-{version}-"))
        try:
            source, size = self._fetch(uri, tmp)
            content = tmp / "content"
            if source.is_dir():
                self._copy_dir(source, content, uri)
                actual = tree_sha256(content)
            else:
                actual = _file_sha256(source)
                if sha256 is not None and actual != sha256:
                    raise ArtifactError(
                        f"sha256 mismatch for {uri}: expected {sha256}, got {actual}"
                    )
                self._extract(source, content, uri)
            if sha256 is not None and actual != sha256:
                raise ArtifactError(f"sha256 mismatch for {uri}: expected {sha256}, got {actual}")
            (content / MARKER).write_text(
                json.dumps({"uri": uri, "sha256": sha256, "content_sha256": actual, "bytes": size})
            )
            target = self.version_dir(model, version)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():  # a stale or different copy: swap it out
                os.rename(target, tmp / "old")
            os.rename(content, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            self._drop_staging()
        seconds = time.monotonic() - started
        log.info("installed %s@%d from %s (%d bytes, %.2fs)", model, version, uri, size, seconds)
        return PullResult(target, size, seconds)

    def _staging(self) -> Path:
        path = self.model_root / STAGING
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _drop_staging(self) -> None:
        try:
            (self.model_root / STAGING).rmdir()
        except OSError:
            pass  # another pull is in progress, or it is already gone

    def _fetch(self, uri: str, tmp: Path) -> tuple[Path, int]:
        """Return a local path of the artifact (file or dir) and its size in bytes."""
        parsed = urllib.parse.urlparse(uri)
        scheme = parsed.scheme.lower()
        if scheme == "file":
            path = Path(urllib.parse.unquote(parsed.path))
            if not path.exists():
                raise ArtifactError(f"artifact {uri} does not exist")
            if path.is_dir():
                return path, 0
            size = path.stat().st_size
            if size > self.max_bytes:
                raise ArtifactError(
                    f"artifact {uri} is {size} bytes, over the limit of {self.max_bytes}"
                )
            self._on_bytes("file", size)
            return path, size
        if scheme in ("http", "https"):
            return self._fetch_http(uri, tmp / ("download" + _suffix(parsed.path)))
        if scheme == "s3":
            return self._fetch_s3(parsed, tmp / ("download" + _suffix(parsed.path)))
        raise ArtifactError(
            f"unsupported artifact URI {uri!r}: use file://, http(s):// or s3:// (optional extra)"
        )

    def _fetch_http(self, uri: str, dest: Path) -> tuple[Path, int]:
        import httpx

        headers = {}
        if self.blob_token and self.manager_url and uri.startswith(self.manager_url):
            headers["Authorization"] = f"Bearer {self.blob_token}"
        size = 0
        try:
            with httpx.stream(
                "GET", uri, headers=headers, timeout=self.http_timeout, follow_redirects=True
            ) as response:
                if response.status_code >= 500 or response.status_code == 429:
                    raise ArtifactUnavailableError(f"HTTP {response.status_code} fetching {uri}")
                if response.status_code >= 400:
                    raise ArtifactError(f"HTTP {response.status_code} fetching {uri}")
                declared = int(response.headers.get("content-length") or 0)
                if declared > self.max_bytes:
                    raise ArtifactError(
                        f"artifact {uri} is {declared} bytes, over the limit of {self.max_bytes}"
                    )
                last = time.monotonic()
                with dest.open("wb") as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise ArtifactError(
                                f"artifact {uri} is over the limit of {self.max_bytes} bytes"
                            )
                        out.write(chunk)
                        self._on_bytes("http", len(chunk))
                        if time.monotonic() - last > _PROGRESS_EVERY:
                            last = time.monotonic()
                            total = f" of {declared}" if declared else ""
                            log.info("downloading %s: %d%s bytes", uri, size, total)
        except httpx.HTTPError as err:
            raise ArtifactUnavailableError(
                f"could not fetch {uri}: {type(err).__name__}: {err}"
            ) from None
        return dest, size

    def _fetch_s3(self, parsed: urllib.parse.ParseResult, dest: Path) -> tuple[Path, int]:
        try:
            import boto3  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise ArtifactError(
                "s3:// artifacts need boto3: install the optional extra with "
                "`pip install 'modelgate[s3]'`"
            ) from None
        client = boto3.client("s3")
        key = parsed.path.lstrip("/")
        head = client.head_object(Bucket=parsed.netloc, Key=key)
        size = int(head.get("ContentLength", 0))
        if size > self.max_bytes:
            raise ArtifactError(f"artifact s3://{parsed.netloc}/{key} is over the size limit")
        client.download_file(parsed.netloc, key, str(dest))
        self._on_bytes("s3", size)
        return dest, size

    # -- unpacking -------------------------------------------------------------------------

    def _extract(self, archive: Path, dest: Path, uri: str) -> None:
        kind = _archive_kind(archive, uri)
        dest.mkdir()
        try:
            if kind == "zip":
                self._extract_zip(archive, dest, uri)
            elif kind == "tar":
                self._extract_tar(archive, dest, uri)
            else:
                raise ArtifactError(
                    f"artifact {uri} is not a directory, .tar.gz, .tar or .zip archive"
                )
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise ArtifactError(f"corrupt archive {uri}: {err or type(err).__name__}") from None

    def _budget(self, uri: str) -> Callable[[int], None]:
        total = 0

        def add(n: int) -> None:
            nonlocal total
            total += n
            if total > self.max_bytes:
                raise ArtifactError(
                    f"artifact {uri} unpacks to more than the limit of {self.max_bytes} bytes"
                )

        return add

    def _extract_tar(self, archive: Path, dest: Path, uri: str) -> None:
        add = self._budget(uri)
        with tarfile.open(archive, "r:*") as tar:
            for member in _iter_tar(tar):
                rel = _safe_member(member.name, uri)
                target = dest / rel
                if member.issym() or member.islnk():
                    raise ArtifactError(
                        f"{uri}: entry {member.name!r} is a link ({member.linkname!r}); "
                        "links are not allowed in artifacts"
                    )
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise ArtifactError(f"{uri}: entry {member.name!r} is not a regular file")
                add(member.size)
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:
                    raise ArtifactError(f"{uri}: entry {member.name!r} cannot be read")
                with src, target.open("wb") as out:
                    _copy(src, out, add=None)
                os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)

    def _extract_zip(self, archive: Path, dest: Path, uri: str) -> None:
        add = self._budget(uri)
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = _safe_member(info.filename, uri)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise ArtifactError(
                        f"{uri}: entry {info.filename!r} is a link; links are not allowed"
                    )
                target = dest / rel
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                add(info.file_size)
                target.parent.mkdir(parents=True, exist_ok=True)
                written = self._budget(uri)
                with zf.open(info) as src, target.open("wb") as out:
                    _copy(src, out, add=written)  # the declared size may lie
            bad = zf.testzip()
            if bad is not None:
                raise ArtifactError(f"corrupt archive {uri}: bad CRC for {bad!r}")

    def _copy_dir(self, source: Path, dest: Path, uri: str) -> None:
        add = self._budget(uri)
        root = source.resolve()
        for dirpath, dirnames, filenames in os.walk(source):
            here = Path(dirpath)
            for name in [*dirnames, *filenames]:
                path = here / name
                if path.is_symlink():
                    resolved = path.resolve()
                    if not resolved.is_relative_to(root):
                        raise ArtifactError(
                            f"{uri}: {path.relative_to(source)} links outside the artifact"
                        )
            for name in filenames:
                path = here / name
                rel = path.relative_to(source)
                if name == MARKER:
                    continue
                size = path.stat().st_size
                add(size)
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                os.chmod(target, 0o755 if path.stat().st_mode & 0o111 else 0o644)
                self._on_bytes("file", size)
        dest.mkdir(exist_ok=True)


def _iter_tar(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (member := tar.next()) is not None:
        yield member


def _copy(src: IO[bytes], out: IO[bytes], add: Callable[[int], None] | None) -> None:
    while chunk := src.read(_CHUNK):
        if add is not None:
            add(len(chunk))
        out.write(chunk)


def _suffix(path: str) -> str:
    name = PurePosixPath(path).name.lower()
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.endswith(suffix):
            return suffix
    return ""


def _archive_kind(path: Path, uri: str) -> str:
    with path.open("rb") as f:
        head = f.read(262)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b") or (len(head) >= 262 and head[257:262] == b"ustar"):
        return "tar"
    suffix = _suffix(urllib.parse.urlparse(uri).path)
    if suffix == ".zip":
        return "zip"
    if suffix:
        return "tar"
    return "unknown"
