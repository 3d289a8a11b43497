"""Pull model artifacts into the local model repository, safely and atomically.

An artifact is a directory, a ``.tar.gz``/``.tgz``/``.tar`` or a ``.zip`` whose top level is
the content of one model version (e.g. ``model.py`` or ``saved_model.pb``), optionally
with the model's ``config.pbtxt``. Sources: ``file://`` (directory or archive),
``http(s)://`` (streamed; the manager's blob URLs get the bearer token) and ``s3://``
(needs the optional ``s3`` extra, i.e. boto3).

Every pull works in a staging dir ``<model-root>/.staging/`` and ends with one atomic
rename into ``<model-root>/<model>/<version>``. A rejected artifact (corrupt archive,
checksum mismatch, unsafe entries or links, over the size limit) leaves nothing behind:
archives are unpacked by :mod:`registry.archives`, downloads made by
:mod:`registry.downloads` (the rules every role shares). The version dir holds a marker
file recording the URI and checksum, so a restarted agent knows what is already on disk
and does not download it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.archives import ArchiveError, archive_kind, extract
from registry.downloads import (
    DownloadError,
    DownloadUnavailableError,
    download,
    file_sha256,
    verify_sha256,
)
from worker_agent.errors import ArtifactError, ArtifactUnavailableError

log = logging.getLogger("worker_agent.artifacts")

MARKER = ".modelgate-artifact.json"
STAGING = ".staging"


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
        digest.update(f"{rel}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


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
        #: Held while the staging directory is created with a pull's directory in it, or
        #: removed when empty: pulls run in threads, and one must not remove it between
        #: another's creating it and its mkdtemp inside.
        self._staging_lock = threading.Lock()
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
            trash = self._staged("remove-")
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
        tmp = self._staged(f"{model}-{version}-")
        what = f"artifact {uri}"
        try:
            source, size, actual = self._fetch(uri, tmp, sha256)
            content = tmp / "content"
            if actual is None:  # a directory: its checksum is the tree digest of the copy
                self._copy_dir(source, content, uri)
                actual = tree_sha256(content)
                verify_sha256(uri, sha256, actual)
            elif archive_kind(source) is None:
                raise ArtifactError(f"{what} is not a directory, .tar.gz, .tar or .zip archive")
            else:
                extract(source, content, max_bytes=self.max_bytes, what=what)
            (content / MARKER).write_text(
                json.dumps({"uri": uri, "sha256": sha256, "content_sha256": actual, "bytes": size})
            )
            target = self.version_dir(model, version)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():  # a stale or different copy: swap it out
                os.rename(target, tmp / "old")
            os.rename(content, target)
        except (ArchiveError, DownloadError) as err:
            raise ArtifactError(str(err)) from None
        except DownloadUnavailableError as err:
            raise ArtifactUnavailableError(str(err)) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            self._drop_staging()
        seconds = time.monotonic() - started
        log.info("installed %s@%d from %s (%d bytes, %.2fs)", model, version, uri, size, seconds)
        return PullResult(target, size, seconds)

    def _staged(self, prefix: str) -> Path:
        """A new private directory in the staging directory (created if need be)."""
        with self._staging_lock:
            path = self.model_root / STAGING
            path.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(dir=path, prefix=prefix))

    def _drop_staging(self) -> None:
        with self._staging_lock:
            try:
                (self.model_root / STAGING).rmdir()
            except OSError:
                pass  # another pull is in progress, or it is already gone

    def _fetch(self, uri: str, tmp: Path, sha256: str | None) -> tuple[Path, int, str | None]:
        """A local path of the artifact, its size and its verified sha256 (None: a directory)."""
        parsed = urllib.parse.urlparse(uri)
        scheme = parsed.scheme.lower()
        if scheme == "file":
            path = Path(urllib.parse.unquote(parsed.path))
            if not path.exists():
                raise ArtifactError(f"artifact {uri} does not exist")
            if path.is_dir():
                return path, 0, None
            size = path.stat().st_size
            self._check_size(uri, size)
            self._on_bytes("file", size)
            actual = file_sha256(path)
        elif scheme in ("http", "https"):
            path = tmp / "download"
            for_manager = self.manager_url is not None and uri.startswith(self.manager_url)
            actual = download(
                uri,
                path,
                max_bytes=self.max_bytes,
                timeout_s=self.http_timeout,
                token=self.blob_token if for_manager else None,
                on_bytes=lambda n: self._on_bytes("http", n),
            )
            size = path.stat().st_size
        elif scheme == "s3":
            path = tmp / "download"
            size = self._fetch_s3(parsed, path)
            actual = file_sha256(path)
        else:
            raise ArtifactError(
                f"unsupported artifact URI {uri!r}: "
                "use file://, http(s):// or s3:// (optional extra)"
            )
        verify_sha256(uri, sha256, actual)
        return path, size, actual

    def _check_size(self, uri: str, size: int) -> None:
        if size > self.max_bytes:
            raise ArtifactError(
                f"artifact {uri} is {size} bytes, over the limit of {self.max_bytes}"
            )

    def _fetch_s3(self, parsed: urllib.parse.ParseResult, dest: Path) -> int:
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
        self._check_size(f"s3://{parsed.netloc}/{key}", size)
        client.download_file(parsed.netloc, key, str(dest))
        self._on_bytes("s3", size)
        return size

    # -- copying a directory artifact --------------------------------------------------------

    def _copy_dir(self, source: Path, dest: Path, uri: str) -> None:
        total = 0
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
                total += size
                if total > self.max_bytes:
                    raise ArtifactError(
                        f"artifact {uri} unpacks to more than the limit of {self.max_bytes} bytes"
                    )
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                os.chmod(target, 0o755 if path.stat().st_mode & 0o111 else 0o644)
                self._on_bytes("file", size)
        dest.mkdir(exist_ok=True)
