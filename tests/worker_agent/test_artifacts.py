"""ArtifactStore: sources, verification, safe extraction, atomic placement, limits."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import tarfile
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.servers.httpd import serve
from tests.worker_agent.helpers import (
    add_one_archive,
    add_one_dir,
    file_entry,
    link_entry,
    sha256,
    tar_with,
)
from worker_agent.artifacts import MARKER, ArtifactStore, tree_sha256
from worker_agent.errors import ArtifactError, ArtifactUnavailableError


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "models", max_bytes=1 << 20)


def nothing_written(store: ArtifactStore) -> bool:
    root = store.model_root
    return not root.exists() or not any(root.iterdir())


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_archive_installs_atomically_with_a_marker(
    store: ArtifactStore, tmp_path: Path, kind: str
) -> None:
    archive = add_one_archive(tmp_path, "m", 1.0, kind=kind)
    result = store.install("m", 3, archive.as_uri(), sha256(archive))
    assert result.path == store.model_root / "m" / "3"
    assert sorted(p.name for p in result.path.iterdir()) == [MARKER, "config.pbtxt", "model.py"]
    assert result.bytes == archive.stat().st_size
    assert store.installed("m", 3, archive.as_uri(), sha256(archive))
    assert not store.installed("m", 3, archive.as_uri(), "1" * 64)
    assert store.installed_versions() == [("m", 3)]
    assert not (store.model_root / ".staging").exists()


def test_directory_artifact_is_copied_and_checked_with_the_tree_digest(
    store: ArtifactStore, tmp_path: Path
) -> None:
    src = add_one_dir(tmp_path, "d", 2.0)
    digest = tree_sha256(src)
    store.install("d", 1, src.as_uri(), digest)
    assert (store.model_root / "d" / "1" / "model.py").read_text() == (src / "model.py").read_text()
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        store.install("d", 2, src.as_uri(), "f" * 64)
    assert not (store.model_root / "d" / "2").exists()


def test_reinstall_replaces_the_old_copy_and_remove_cleans_up(
    store: ArtifactStore, tmp_path: Path
) -> None:
    a = add_one_archive(tmp_path, "r", 1.0)
    b = add_one_archive(tmp_path, "r", 7.0, kind="zip")
    store.install("r", 1, a.as_uri(), None)
    store.install("r", 1, b.as_uri(), None)
    assert "+ 7" in (store.model_root / "r" / "1" / "model.py").read_text()
    assert store.installed("r", 1, b.as_uri(), None)
    store.remove("r", 1)
    assert nothing_written(store)


def test_concurrent_pulls_and_removes_share_the_staging_directory(
    store: ArtifactStore, tmp_path: Path
) -> None:
    # NOTE: each finished pull removes the staging directory when it is empty; another pull
    # starting at that moment must still get its own directory in it
    archive = add_one_archive(tmp_path, "c", 1.0)
    digest = sha256(archive)

    def churn(n: int) -> None:
        for round_ in range(15):
            store.install(f"c{n}", 1, archive.as_uri(), digest)
            if round_ % 2:
                store.remove(f"c{n}", 1)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(churn, range(8)))  # re-raises the first failure

    assert store.installed_versions() == [(f"c{n}", 1) for n in range(8)]
    assert not (store.model_root / ".staging").exists()


def test_checksum_mismatch_is_rejected_before_extracting(
    store: ArtifactStore, tmp_path: Path
) -> None:
    archive = add_one_archive(tmp_path, "m", 1.0)
    with pytest.raises(ArtifactError, match=r"sha256 mismatch.*expected 0{64}"):
        store.install("m", 1, archive.as_uri(), "0" * 64)
    assert nothing_written(store)


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_corrupt_archives_are_rejected(store: ArtifactStore, tmp_path: Path, kind: str) -> None:
    archive = add_one_archive(tmp_path, "m", 1.0, kind=kind)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt archive"):
        store.install("m", 1, archive.as_uri(), None)
    assert nothing_written(store)


def test_a_file_that_is_no_archive_is_rejected(store: ArtifactStore, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"just some bytes")
    with pytest.raises(ArtifactError, match=r"not a directory, \.tar\.gz, \.tar or \.zip"):
        store.install("m", 1, blob.as_uri(), None)
    assert nothing_written(store)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([(file_entry("ok.py"), b"1"), (file_entry("../up.py"), b"x")], "escapes"),
        ([(file_entry("a/../../up.py"), b"x")], "escapes"),
        ([(file_entry("/etc/evil"), b"x")], "absolute path"),
        ([(link_entry("link", "/etc/passwd"), None)], "link"),
        ([(link_entry("link", "../../outside"), None)], "link"),
        ([(file_entry("f"), b"1"), (link_entry("hard", "/etc/passwd", hard=True), None)], "link"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-abs", "symlink-rel", "hardlink"],
)
def test_tar_entries_escaping_the_target_are_rejected(
    store: ArtifactStore, tmp_path: Path, entries: list, message: str
) -> None:
    archive = tar_with(tmp_path / "evil.tar.gz", entries)
    with pytest.raises(ArtifactError, match=message):
        store.install("m", 1, archive.as_uri(), None)
    assert nothing_written(store)
    assert not (tmp_path / "up.py").exists()


@pytest.mark.parametrize("name", ["../up.py", "/abs.py", "a/../../up.py"])
def test_zip_entries_escaping_the_target_are_rejected(
    store: ArtifactStore, tmp_path: Path, name: str
) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.py", "1")
        zf.writestr(zipfile.ZipInfo(name), "x")
    with pytest.raises(ArtifactError, match=r"escapes|absolute"):
        store.install("m", 1, archive.as_uri(), None)
    assert nothing_written(store)


def test_zip_symlinks_are_rejected(store: ArtifactStore, tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("link")
    info.external_attr = 0o120777 << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArtifactError, match="link"):
        store.install("m", 1, archive.as_uri(), None)
    assert nothing_written(store)


def test_directory_with_a_link_out_is_rejected(store: ArtifactStore, tmp_path: Path) -> None:
    src = add_one_dir(tmp_path, "d", 1.0)
    os.symlink("/etc/passwd", src / "passwd")
    with pytest.raises(ArtifactError, match="links outside"):
        store.install("d", 1, src.as_uri(), None)
    assert nothing_written(store)


def test_size_limits_apply_to_the_download_and_to_the_unpacked_content(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "models", max_bytes=64 * 1024)
    big = tmp_path / "big.tar.gz"
    with tarfile.open(big, "w:gz") as tf:  # compresses to almost nothing
        info = tarfile.TarInfo("zeros.bin")
        info.size = 1 << 20
        tf.addfile(info, io.BytesIO(b"\0" * info.size))
    assert big.stat().st_size < 64 * 1024
    with pytest.raises(ArtifactError, match="unpacks to more than the limit"):
        store.install("m", 1, big.as_uri(), None)
    noisy = tmp_path / "noise.tar.gz"
    noisy.write_bytes(os.urandom(100 * 1024))
    with pytest.raises(ArtifactError, match="over the limit"):
        store.install("m", 1, noisy.as_uri(), None)
    zbomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(zbomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (1 << 20))
    with pytest.raises(ArtifactError, match="unpacks to more than the limit"):
        store.install("m", 1, zbomb.as_uri(), None)
    assert nothing_written(store)


def test_unsupported_and_missing_sources(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="unsupported artifact URI"):
        store.install("m", 1, "ftp://example.com/m.tar.gz", None)
    with pytest.raises(ArtifactError, match="does not exist"):
        store.install("m", 1, (tmp_path / "nope.tar.gz").as_uri(), None)
    assert nothing_written(store)


def test_s3_without_boto3_names_the_optional_extra(store: ArtifactStore) -> None:
    try:
        import boto3  # noqa: F401

        pytest.skip("boto3 is installed here")
    except ImportError:
        pass
    with pytest.raises(ArtifactError, match=r"modelgate\[s3\]"):
        store.install("m", 1, "s3://bucket/models/m.tar.gz", None)
    assert nothing_written(store)


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    auth: list[str | None] = []

    def do_GET(self) -> None:
        type(self).auth.append(self.headers.get("Authorization"))
        if self.path.startswith("/boom"):
            self.send_error(503)
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_files() -> Iterator[tuple[str, type[_Files]]]:
    handler = type("Files", (_Files,), {"files": {}, "auth": []})
    with serve(handler) as base:
        yield base, handler


def test_http_download_streams_verifies_and_sends_the_token_only_to_the_manager(
    tmp_path: Path, http_files: tuple[str, type[_Files]]
) -> None:
    base, handler = http_files
    archive = add_one_archive(tmp_path, "h", 3.0)
    handler.files["/v1/blobs/abc"] = archive.read_bytes()  # a blob URL has no suffix
    handler.files["/other/h.zip"] = add_one_archive(tmp_path, "h", 4.0, kind="zip").read_bytes()
    seen: list[int] = []
    store = ArtifactStore(
        tmp_path / "models",
        max_bytes=1 << 20,
        manager_url=f"{base}/v1/",
        blob_token="s3cret",
        on_bytes=lambda scheme, n: seen.append(n),
    )
    digest = hashlib.sha256(handler.files["/v1/blobs/abc"]).hexdigest()
    result = store.install("h", 1, f"{base}/v1/blobs/abc", digest)
    assert (result.path / "model.py").is_file()
    assert sum(seen) == archive.stat().st_size
    store.install("h", 2, f"{base}/other/h.zip", None)
    assert handler.auth == ["Bearer s3cret", None]

    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        store.install("h", 3, f"{base}/v1/blobs/abc", "0" * 64)
    with pytest.raises(ArtifactError, match="HTTP 404"):
        store.install("h", 3, f"{base}/v1/blobs/missing", None)
    with pytest.raises(ArtifactUnavailableError, match="HTTP 503"):
        store.install("h", 3, f"{base}/boom", None)
    assert not (store.model_root / "h" / "3").exists()
    assert not (store.model_root / ".staging").exists()
