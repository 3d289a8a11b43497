"""Render 8x8 digits (values 0..16, ink high) as ordinary images, as a person would send them."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def render(pixels: np.ndarray, fmt: str = "PNG", scale: int = 4) -> bytes:
    """The digit as a dark-on-light image ``scale`` times larger, encoded as ``fmt``."""
    ink = (np.asarray(pixels).reshape(8, 8) / 16.0 * 255.0).round().astype(np.uint8)
    image = Image.fromarray(255 - ink, mode="L")
    image = image.resize((8 * scale, 8 * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()
