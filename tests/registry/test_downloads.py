"""registry.downloads against a real HTTP server: cap, checksum, token, transient or not."""

from __future__ import annotations

import hashlib
import http.server
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.downloads import (
    DownloadError,
    DownloadUnavailableError,
    download,
    file_sha256,
    verify_sha256,
)
from tests.servers.httpd import serve

BODY = bytes(range(256)) * 40  # 10 KiB
BODY_SHA = hashlib.sha256(BODY).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    auth: list[str | None]

    def do_GET(self) -> None:
        type(self).auth.append(self.headers.get("Authorization"))
        if self.path.startswith("/status/"):
            self.send_response(int(self.path.rsplit("/", 1)[1]))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/blob")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/chunked":  # no Content-Length: only the bytes received count
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(BODY), 1024):
                piece = BODY[start : start + 1024]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"auth": []})
    with serve(handler) as base:
        yield base, handler


def test_download_streams_hashes_and_reports_bytes(
    tmp_path: Path, server: tuple[str, type[_Handler]]
) -> None:
    base, handler = server
    seen: list[int] = []
    dest = tmp_path / "blob"
    digest = download(
        f"{base}/blob",
        dest,
        max_bytes=len(BODY),
        timeout_s=10,
        sha256=BODY_SHA,
        on_bytes=seen.append,
    )
    assert digest == BODY_SHA == file_sha256(dest)
    assert dest.read_bytes() == BODY
    assert sum(seen) == len(BODY)
    assert handler.auth == [None]


def test_the_token_is_a_bearer_header_and_redirects_are_followed(
    tmp_path: Path, server: tuple[str, type[_Handler]]
) -> None:
    base, handler = server
    download(f"{base}/moved", tmp_path / "blob", max_bytes=1 << 20, timeout_s=10, token="s3cret")
    assert (tmp_path / "blob").read_bytes() == BODY
    assert handler.auth == ["Bearer s3cret", "Bearer s3cret"]  # same host


def test_a_checksum_mismatch_leaves_no_file(
    tmp_path: Path, server: tuple[str, type[_Handler]]
) -> None:
    base, _ = server
    with pytest.raises(
        DownloadError, match=f"sha256 mismatch for {base}/blob: expected 0{{64}}, got {BODY_SHA}"
    ):
        download(
            f"{base}/blob", tmp_path / "blob", max_bytes=1 << 20, timeout_s=10, sha256="0" * 64
        )
    assert not (tmp_path / "blob").exists()


@pytest.mark.parametrize("path", ["/blob", "/chunked"], ids=["content-length", "chunked"])
def test_over_the_cap_is_refused_and_leaves_no_file(
    tmp_path: Path, server: tuple[str, type[_Handler]], path: str
) -> None:
    base, _ = server
    with pytest.raises(DownloadError, match="over the limit of 4096 bytes"):
        download(f"{base}{path}", tmp_path / "blob", max_bytes=4096, timeout_s=10)
    assert not (tmp_path / "blob").exists()


def test_chunked_within_the_cap_downloads(
    tmp_path: Path, server: tuple[str, type[_Handler]]
) -> None:
    base, _ = server
    assert (
        download(f"{base}/chunked", tmp_path / "b", max_bytes=len(BODY), timeout_s=10) == BODY_SHA
    )


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, DownloadError),
        (403, DownloadError),
        (500, DownloadUnavailableError),
        (503, DownloadUnavailableError),
        (429, DownloadUnavailableError),
    ],
)
def test_server_errors_and_429_are_transient_other_refusals_are_not(
    tmp_path: Path, server: tuple[str, type[_Handler]], status: int, error: type[Exception]
) -> None:
    base, _ = server
    with pytest.raises(error, match=f"HTTP {status} fetching {base}/status/{status}"):
        download(f"{base}/status/{status}", tmp_path / "blob", max_bytes=1024, timeout_s=10)
    assert not (tmp_path / "blob").exists()


def test_an_unreachable_server_is_transient(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound but not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/blob"
        with pytest.raises(DownloadUnavailableError, match=f"could not fetch {url}: ConnectError"):
            download(url, tmp_path / "blob", max_bytes=1024, timeout_s=10)
    assert not (tmp_path / "blob").exists()


def test_verify_sha256_without_an_expectation_accepts_anything() -> None:
    verify_sha256("x", None, "abc")
    with pytest.raises(DownloadError, match="sha256 mismatch for x: expected def, got abc"):
        verify_sha256("x", "def", "abc")
