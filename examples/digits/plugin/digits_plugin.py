"""The digits plugin: "send an image of a digit, get the digit".

Accepted ``Invoke`` payloads:

- an image (``image/png``, ``image/jpeg``, or any bytes PIL can open): any size, dark ink on
  light paper or the reverse;
- a URL to fetch (``text/uri-list`` or ``text/plain`` payload, or the ``url`` parameter):
  ``http`` and ``https`` only, with a size limit and a timeout;
- JSON ``{"pixels": [...]}``: 64 values (or 8 rows of 8), 0..16, ink high.

Answer: ``{"digit": d, "confidence": p}`` as JSON. On the KServe/TF-Serving surfaces the
caller sends the model's own ``PIXELS`` tensor and gets ``PROBABILITIES`` back unchanged.

``plugin_config``: ``max_image_bytes`` (default 5 MB), ``url_timeout_s`` (default 5).
"""

from __future__ import annotations

import io
import json
from urllib.parse import urlparse

import httpx
import numpy as np
from PIL import Image, UnidentifiedImageError

import udl

INPUT = "PIXELS"
OUTPUT = "PROBABILITIES"


class DigitsPlugin(udl.Plugin):
    def load(self, config):
        self.max_bytes = int(config.get("max_image_bytes", 5 * 1024 * 1024))
        self.url_timeout = float(config.get("url_timeout_s", 5.0))

    def preprocess(self, request):
        if INPUT in request.tensors:  # a native tensor call: nothing to convert
            return request
        pixels = self._pixels(request)
        request.tensors = {INPUT: pixels.reshape(1, 64).astype(np.float32)}
        return request

    def postprocess(self, response, request):
        if not request.payload and "url" not in request.parameters:
            return response  # tensor surfaces get the probabilities themselves
        probabilities = response.tensors[OUTPUT][0]
        digit = int(probabilities.argmax())
        answer = {"digit": digit, "confidence": round(float(probabilities[digit]), 4)}
        response.payload = json.dumps(answer).encode()
        response.content_type = "application/json"
        response.tensors = {}
        return response

    # -- input decoding --------------------------------------------------------------------

    def _pixels(self, request):
        url = request.parameters.get("url")
        ctype = request.content_type.split(";")[0].strip().lower()
        if url is None and ctype in ("text/uri-list", "text/plain"):
            url = request.payload.decode(errors="replace").strip().splitlines()[0:1]
            url = url[0] if url else ""
        if url is not None:
            return image_to_pixels(self._fetch(url))
        if ctype == "application/json":
            return json_to_pixels(request.payload)
        if not request.payload:
            raise udl.InvalidInput("empty payload: send an image, a URL or JSON pixels")
        if len(request.payload) > self.max_bytes:
            raise udl.InvalidInput(f"image is over the limit of {self.max_bytes} bytes")
        return image_to_pixels(request.payload)

    def _fetch(self, url):
        scheme = urlparse(url).scheme
        if scheme not in ("http", "https"):
            raise udl.InvalidInput(
                f"URL scheme {scheme or '(none)'!r} not allowed: use http or https"
            )
        try:
            with httpx.stream("GET", url, timeout=self.url_timeout, follow_redirects=True) as r:
                if r.status_code != 200:
                    raise udl.InvalidInput(f"fetching {url} answered HTTP {r.status_code}")
                data = bytearray()
                for chunk in r.iter_bytes():
                    data += chunk
                    if len(data) > self.max_bytes:
                        raise udl.InvalidInput(f"{url} is over the limit of {self.max_bytes} bytes")
        except httpx.TimeoutException:
            raise udl.InvalidInput(
                f"fetching {url} timed out after {self.url_timeout:g}s"
            ) from None
        except httpx.HTTPError as err:
            raise udl.InvalidInput(f"could not fetch {url}: {err}") from None
        return bytes(data)


def image_to_pixels(data: bytes) -> np.ndarray:
    """Decode an image into 64 values 0..16 with the ink high, like the training data."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise udl.InvalidInput(f"not a readable image: {err}") from None
    gray = np.asarray(image.convert("L").resize((8, 8), Image.Resampling.BOX), dtype=np.float32)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > 127:  # dark ink on light paper: flip so ink is high
        gray = 255.0 - gray
    return gray.reshape(64) / 255.0 * 16.0


def json_to_pixels(payload: bytes) -> np.ndarray:
    try:
        pixels = np.asarray(json.loads(payload)["pixels"], dtype=np.float32)
    except (ValueError, KeyError, TypeError):
        raise udl.InvalidInput('JSON payload must be {"pixels": [64 numbers 0..16]}') from None
    if pixels.size != 64:
        raise udl.InvalidInput(f"expected 64 pixels (8x8), got {pixels.size}")
    if pixels.min() < 0 or pixels.max() > 16:
        raise udl.InvalidInput("pixel values must be between 0 and 16")
    return pixels.reshape(64)
