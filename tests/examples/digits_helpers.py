"""Shared helpers for the digits example tests: render held-out digits as images, serve them."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "digits"


def load_train_module():
    spec = importlib.util.spec_from_file_location("digits_train", DIGITS / "train.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render(pixels: np.ndarray, fmt: str = "PNG", scale: int = 4) -> bytes:
    """An 8x8 digit (0..16, ink high) as a dark-on-light image ``scale`` times larger."""
    ink = (pixels.reshape(8, 8) / 16.0 * 255.0).round().astype(np.uint8)
    image = Image.fromarray(255 - ink, mode="L").resize(
        (8 * scale, 8 * scale), Image.Resampling.NEAREST
    )
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@contextmanager
def serve_files(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1 (port 0); yield the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
