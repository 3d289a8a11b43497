"""A small content-addressed blob store on disk: ``<dir>/<sha[:2]>/<sha>``."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO

from manager_api.errors import PayloadTooLargeError
from registry.errors import InvalidArgumentError, NotFoundError

_SHA = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class BlobStore:
    """Blobs keyed by their SHA-256; writes are atomic (temp file + rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Path of an existing blob; NotFoundError otherwise."""
        if not _SHA.match(sha256):
            raise InvalidArgumentError(
                f"invalid sha256 {sha256!r}: use 64 lower-case hexadecimal characters"
            )
        path = self.directory / sha256[:2] / sha256
        if not path.is_file():
            raise NotFoundError(f"blob {sha256} does not exist")
        return path

    def put(self, source: BinaryIO, limit: int, what: str = "upload") -> tuple[str, int]:
        """Copy ``source`` into the store; return (sha256, size). Bigger than ``limit`` -> 413."""
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=".upload-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLargeError(
                            f"{what} is larger than the limit of {limit // (1 << 20)} MiB"
                        )
                    digest.update(chunk)
                    out.write(chunk)
            sha = digest.hexdigest()
            final = self.directory / sha[:2] / sha
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            return sha, size
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, sha256: str) -> None:
        try:
            self.path(sha256).unlink(missing_ok=True)
        except NotFoundError:
            pass
