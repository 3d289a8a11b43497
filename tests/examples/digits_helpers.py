"""Helpers for the digits example tests: where the example lives, a loopback file server."""

from __future__ import annotations

import http.server
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers.httpd import serve

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "digits"


@contextmanager
def serve_files(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1 (port 0); yield the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    with serve(Quiet) as base:
        yield base
