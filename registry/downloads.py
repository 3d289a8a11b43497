"""Capped, sha256-checked HTTP downloads (model artifacts, plugin packages), for every role.

:func:`download` streams a URL into a file, refuses more than ``max_bytes`` (the declared
``Content-Length`` and the bytes received), hashes while it streams and, given the expected
sha256, refuses a mismatch. Errors say whether retrying may help: HTTP 5xx, 429 and network
failures are :class:`DownloadUnavailableError`; any other refusal is :class:`DownloadError`.
A failed download leaves no file behind.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from registry.errors import InvalidArgumentError, UnavailableError

log = logging.getLogger("registry.downloads")

_CHUNK = 1 << 20
_PROGRESS_EVERY_S = 5.0


class DownloadError(InvalidArgumentError):
    """The download was refused: HTTP 4xx, over the size limit, or a sha256 mismatch."""


class DownloadUnavailableError(UnavailableError):
    """The download failed for now (network error, HTTP 5xx or 429); retrying may help."""


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's content."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_sha256(what: str, expected: str | None, actual: str) -> None:
    """DownloadError unless ``actual`` is ``expected`` (None: nothing to check)."""
    if expected is not None and actual != expected:
        raise DownloadError(f"sha256 mismatch for {what}: expected {expected}, got {actual}")


def download(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    timeout_s: float,
    sha256: str | None = None,
    token: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> str:
    """Stream ``url`` into ``dest``; return the content's sha256 (checked if ``sha256`` is given).

    ``token`` is sent as a bearer token (httpx drops it on a redirect to another host);
    ``on_bytes`` is called with the size of every chunk received.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    digest = hashlib.sha256()
    size = 0
    try:
        with httpx.stream(
            "GET", url, headers=headers, timeout=timeout_s, follow_redirects=True
        ) as response:
            if response.status_code >= 500 or response.status_code == 429:
                raise DownloadUnavailableError(f"HTTP {response.status_code} fetching {url}")
            if response.status_code >= 400:
                raise DownloadError(f"HTTP {response.status_code} fetching {url}")
            declared = int(response.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise DownloadError(
                    f"{url} is {declared} bytes, over the limit of {max_bytes} bytes"
                )
            last_report = time.monotonic()
            with dest.open("wb") as out:
                for chunk in response.iter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise DownloadError(f"{url} is over the limit of {max_bytes} bytes")
                    out.write(chunk)
                    digest.update(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                    if time.monotonic() - last_report > _PROGRESS_EVERY_S:
                        last_report = time.monotonic()
                        total = f" of {declared}" if declared else ""
                        log.info("downloading %s: %d%s bytes", url, size, total)
        actual = digest.hexdigest()
        verify_sha256(url, sha256, actual)
    except httpx.HTTPError as err:
        dest.unlink(missing_ok=True)
        raise DownloadUnavailableError(
            f"could not fetch {url}: {type(err).__name__}: {err}"
        ) from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return actual
