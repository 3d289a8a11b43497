"""registry.archives: one rule for entries, links, special files and the byte budget."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from registry.archives import ArchiveError, archive_kind, checked_zip, extract, member_path


def tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    return info


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["model.py", "1/model.py", "./a/b.txt", "dir/"])
def test_relative_names_are_accepted(name: str) -> None:
    assert not member_path(name, "x").is_absolute()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("C:/Windows/evil.dll", "starts with a drive letter"),
        ("c:evil", "starts with a drive letter"),
        ("a\\..\\..\\evil", "contains a backslash"),
        ("dir\\file.py", "contains a backslash"),
        ("/etc/passwd", "is an absolute path"),
        ("../up.py", "escapes the target directory"),
        ("a/../../up.py", "escapes the target directory"),
    ],
)
def test_unsafe_names_are_refused_naming_the_entry(name: str, message: str) -> None:
    with pytest.raises(ArchiveError, match=f"pkg: entry {name!r}".replace("\\", "\\\\")) as err:
        member_path(name, "pkg")
    assert message in str(err.value)


@pytest.mark.parametrize("kind", ["w:gz", "w:bz2", "w:xz", "w"])
def test_tar_of_any_compression_extracts_from_bytes_and_from_a_file(
    tmp_path: Path, kind: str
) -> None:
    data = tar_bytes(
        [(entry("m", tarfile.DIRTYPE, 0o755), None), (entry("m/model.py", mode=0o755), b"x = 1")],
        kind,
    )
    extract(data, tmp_path / "a", max_bytes=1024, what="artifact")
    assert (tmp_path / "a" / "m" / "model.py").read_bytes() == b"x = 1"
    path = tmp_path / "artifact.tar"
    path.write_bytes(data)
    extract(path, tmp_path / "b", max_bytes=1024, what="artifact")
    assert (tmp_path / "b" / "m" / "model.py").read_bytes() == b"x = 1"


def test_the_data_filter_drops_setuid_and_group_write_bits(tmp_path: Path) -> None:
    data = tar_bytes([(entry("run.sh", mode=0o4777), b"#!/bin/sh\n")])
    extract(data, tmp_path / "out", max_bytes=1024, what="artifact")
    mode = stat.S_IMODE((tmp_path / "out" / "run.sh").stat().st_mode)
    assert mode & (stat.S_ISUID | stat.S_IWGRP | stat.S_IWOTH) == 0
    assert mode & stat.S_IXUSR


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([(entry("ok.py"), b"1"), (entry("C:/evil.py"), b"x")], "drive letter"),
        ([(entry("ok.py"), b"1"), (entry("sub\\evil.py"), b"x")], "backslash"),
        ([(entry("ok.py"), b"1"), (entry("/abs.py"), b"x")], "absolute path"),
        ([(entry("ok.py"), b"1"), (entry("../up.py"), b"x")], "escapes"),
        ([(entry("ok.py"), b"1"), (entry("fifo", tarfile.FIFOTYPE), None)], "not a regular"),
        ([(entry("dev", tarfile.CHRTYPE), None)], "not a regular"),
    ],
    ids=["drive", "backslash", "absolute", "dotdot", "fifo", "device"],
)
def test_unsafe_tar_entries_leave_nothing_behind(
    tmp_path: Path, entries: list, message: str
) -> None:
    with pytest.raises(ArchiveError, match=message):
        extract(tar_bytes(entries), tmp_path / "out", max_bytes=1024, what="artifact")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "up.py").exists()


@pytest.mark.parametrize("hard", [False, True])
def test_tar_links_are_refused_even_inside_the_target(tmp_path: Path, hard: bool) -> None:
    link = entry("alias.py", tarfile.LNKTYPE if hard else tarfile.SYMTYPE)
    link.linkname = "model.py"
    with pytest.raises(ArchiveError, match=r"entry 'alias.py' is a link \('model.py'\)"):
        extract(
            tar_bytes([(entry("model.py"), b"x"), (link, None)]),
            tmp_path / "out",
            max_bytes=1024,
            what="artifact",
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["C:/evil.py", "sub\\evil.py", "/abs.py", "../up.py"])
def test_unsafe_zip_entries_are_refused_before_anything_is_written(
    tmp_path: Path, name: str
) -> None:
    data = zip_bytes({"ok.py": b"1", name: b"x"})
    with pytest.raises(ArchiveError, match="pkg: entry"):
        checked_zip(data, max_bytes=1024, what="pkg")
    with pytest.raises(ArchiveError, match="pkg: entry"):
        extract(data, tmp_path / "out", max_bytes=1024, what="pkg")
    assert not (tmp_path / "out").exists()


def test_zip_symlinks_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(info, "model.py")
    with pytest.raises(ArchiveError, match="entry 'link' is a link"):
        extract(buffer.getvalue(), tmp_path / "out", max_bytes=1024, what="pkg")
    assert not (tmp_path / "out").exists()


def test_zip_extracts_with_directories(tmp_path: Path) -> None:
    extract(
        zip_bytes({"pkg/": b"", "pkg/a.py": b"a", "b.py": b"b"}),
        tmp_path / "o",
        max_bytes=9,
        what="p",
    )
    assert (tmp_path / "o" / "pkg" / "a.py").read_bytes() == b"a"
    assert (tmp_path / "o" / "b.py").read_bytes() == b"b"


def test_the_budget_counts_every_entry_together(tmp_path: Path) -> None:
    zeros = b"\0" * 600  # two entries, each within the budget, together over it
    for data in (
        zip_bytes({"a.bin": zeros, "b.bin": zeros}),
        tar_bytes([(entry("a.bin"), zeros), (entry("b.bin"), zeros)]),
    ):
        with pytest.raises(ArchiveError, match="unpacks to more than the limit of 1000 bytes"):
            extract(data, tmp_path / "out", max_bytes=1000, what="artifact")
        assert not (tmp_path / "out").exists()


def test_a_zip_that_understates_its_sizes_is_stopped(tmp_path: Path) -> None:
    data = bytearray(zip_bytes({"zeros.bin": b"\0" * 5000}))
    # Lower the declared size in both headers; the content still inflates to 5000 bytes.
    for header, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(header) + offset
        data[at : at + 4] = (10).to_bytes(4, "little")
    with pytest.raises(ArchiveError, match="corrupt archive"):
        extract(bytes(data), tmp_path / "out", max_bytes=1000, what="artifact")
    assert not (tmp_path / "out").exists()


def test_truncated_archives_are_corrupt_and_other_bytes_are_no_archive(tmp_path: Path) -> None:
    big = bytes(range(256)) * 64
    for data in (zip_bytes({"a.bin": big}), tar_bytes([(entry("a.bin"), big)])):
        truncated = data[: len(data) // 2]
        assert archive_kind(truncated) is not None
        with pytest.raises(ArchiveError, match="artifact: corrupt archive"):
            extract(truncated, tmp_path / "out", max_bytes=1 << 20, what="artifact")
        assert not (tmp_path / "out").exists()
    with pytest.raises(ArchiveError, match=r"artifact is not a \.tar\.gz, \.tar or \.zip"):
        extract(b"just some bytes", tmp_path / "out", max_bytes=1024, what="artifact")
    assert not (tmp_path / "out").exists()
