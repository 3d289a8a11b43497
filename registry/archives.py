"""Safe extraction of untrusted archives (model artifacts, plugin packages), for every role.

One rule for every archive: each entry is a relative ``/``-separated path that stays inside
the target. Rejected, with an error naming the entry: absolute paths, drive letters
(``C:...``), backslashes, any ``..`` component, links (symbolic or hard), and anything that
is not a regular file or a directory. The content may not unpack to more than a byte budget
(a zip's declared sizes are counted before anything is written; the standard library never
inflates an entry past its declared size). A failed extraction leaves nothing behind.

Tar archives (plain, gzip, bzip2 or xz) go through :func:`tarfile.TarFile.extractall` with
these checks in front of the standard library's ``data`` filter (which also drops
setuid/setgid bits and group/other write permission).
"""

from __future__ import annotations

import io
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Literal

from registry.errors import InvalidArgumentError

_CHUNK = 1 << 20
#: Leading bytes of a zip, and of a gzip, bzip2 or xz stream (a compressed tar).
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_TAR_MAGIC_OFFSET = 257  # "ustar" in a POSIX or GNU tar header


class ArchiveError(InvalidArgumentError):
    """An archive was refused: not an archive, corrupt, an unsafe entry, or over the budget."""


def member_path(name: str, what: str) -> PurePosixPath:
    """The entry ``name`` as a relative path inside the target, or ArchiveError naming it."""
    if PureWindowsPath(name).drive:
        raise ArchiveError(f"{what}: entry {name!r} starts with a drive letter")
    if "\\" in name:
        raise ArchiveError(f"{what}: entry {name!r} contains a backslash; entries use '/'")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise ArchiveError(f"{what}: entry {name!r} is an absolute path; it escapes the target")
    if ".." in path.parts:
        raise ArchiveError(f"{what}: entry {name!r} escapes the target directory")
    return path


class _Budget:
    """Counts bytes against ``max_bytes``; ArchiveError once they are exceeded."""

    def __init__(self, max_bytes: int, what: str) -> None:
        self.max_bytes = max_bytes
        self.what = what
        self.total = 0

    def add(self, n: int) -> None:
        self.total += n
        if self.total > self.max_bytes:
            raise ArchiveError(
                f"{self.what} unpacks to more than the limit of {self.max_bytes} bytes"
            )


def checked_zip(source: Path | bytes, *, max_bytes: int, what: str) -> zipfile.ZipFile:
    """Open a zip whose every entry is safe and whose declared sizes fit ``max_bytes``."""
    try:
        archive = zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source))
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ArchiveError(f"{what}: corrupt archive: {err or type(err).__name__}") from None
    budget = _Budget(max_bytes, what)
    for info in archive.infolist():
        member_path(info.filename, what)
        if stat.S_ISLNK(info.external_attr >> 16):
            archive.close()
            raise ArchiveError(f"{what}: entry {info.filename!r} is a link; links are not allowed")
        budget.add(info.file_size)
    return archive


def archive_kind(source: Path | bytes) -> Literal["zip", "tar"] | None:
    """What ``source`` claims to be by its leading bytes (a corrupt archive still claims).

    NOTE: not :func:`zipfile.is_zipfile`/:func:`tarfile.is_tarfile`: the first is False for a
    truncated zip and the second raises EOFError on a truncated ``.tar.gz``, so neither tells
    "corrupt archive" from "not an archive".
    """
    with _open(source) as f:
        head = f.read(_TAR_MAGIC_OFFSET + 5)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_COMPRESSED_MAGIC) or head[_TAR_MAGIC_OFFSET:] == b"ustar":
        return "tar"
    return None


def extract(source: Path | bytes, dest: Path, *, max_bytes: int, what: str) -> None:
    """Unpack a tar or zip archive into ``dest`` (created; it must not exist yet).

    ``what`` names the archive in errors. On any error ``dest`` is removed again.
    """
    kind = archive_kind(source)
    if kind is None:
        raise ArchiveError(f"{what} is not a .tar.gz, .tar or .zip archive")
    dest.mkdir(parents=True)
    try:
        try:
            if kind == "zip":
                _extract_zip(source, dest, max_bytes, what)
            else:
                _extract_tar(source, dest, max_bytes, what)
        except tarfile.FilterError as err:  # the data filter refused what the checks let by
            raise ArchiveError(f"{what}: {err}") from None
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise ArchiveError(f"{what}: corrupt archive: {err or type(err).__name__}") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _extract_zip(source: Path | bytes, dest: Path, max_bytes: int, what: str) -> None:
    # NOTE: the declared sizes are the budget: zipfile never yields more than an entry's
    # declared size (an entry that inflates to more fails its CRC check as corrupt).
    with checked_zip(source, max_bytes=max_bytes, what=what) as archive:
        for info in archive.infolist():
            target = dest.joinpath(*member_path(info.filename, what).parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)


def _extract_tar(source: Path | bytes, dest: Path, max_bytes: int, what: str) -> None:
    budget = _Budget(max_bytes, what)

    def check(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        member_path(member.name, what)
        if member.issym() or member.islnk():
            raise ArchiveError(
                f"{what}: entry {member.name!r} is a link ({member.linkname!r}); "
                "links are not allowed"
            )
        if not (member.isfile() or member.isdir()):
            raise ArchiveError(f"{what}: entry {member.name!r} is not a regular file")
        budget.add(member.size)
        return tarfile.data_filter(member, path)

    with _open(source) as f, tarfile.open(fileobj=f, mode="r:*") as archive:
        archive.extractall(dest, filter=check)


def _open(source: Path | bytes) -> IO[bytes]:
    return io.BytesIO(source) if isinstance(source, bytes) else source.open("rb")
