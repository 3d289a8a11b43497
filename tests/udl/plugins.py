"""Small real plugins for tests, written as folders (plugin.toml + modules)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from udl.package import pack

ECHO = """
import numpy as np
import udl

class Echo(udl.Plugin):
    def load(self, config):
        self.scale = float(config.get("scale", 1.0))

    def preprocess(self, request):
        request.tensors = {"INPUT0": np.asarray(request.tensors["x"], np.float32) * self.scale}
        return request

    def postprocess(self, response, request):
        response.payload = ",".join(str(v) for v in response.tensors["OUTPUT0"]).encode()
        response.content_type = "text/plain"
        return response
"""

ASYNC_ECHO = """
import asyncio
import numpy as np
import udl

class AsyncEcho(udl.Plugin):
    async def load(self, config):
        self.scale = float(config.get("scale", 1.0))

    async def preprocess(self, request):
        await asyncio.sleep(0)
        request.tensors = {"INPUT0": np.asarray(request.tensors["x"], np.float32) * self.scale}
        return request
"""

ERRORS = """
import os
import time
import udl

class Errors(udl.Plugin):
    def preprocess(self, request):
        mode = request.parameters.get("mode")
        if mode is None:  # say which process ran the hook
            request.parameters["pid"] = str(os.getpid())
        if mode == "crash":
            os._exit(3)
        if mode == "invalid":
            raise udl.InvalidInput("pixels must be 8x8")
        if mode == "bug":
            raise KeyError("secret-internal-detail")
        if mode == "slow":
            time.sleep(2)
        if mode == "wrong-type":
            return {"not": "a request"}
        return request
"""

BROKEN_LOAD = """
import udl

class Broken(udl.Plugin):
    def load(self, config):
        raise RuntimeError("model file missing")
"""

PRE_ONLY = """
import numpy as np
import udl

class PreOnly(udl.Plugin):
    def preprocess(self, request):
        request.tensors = {"INPUT0": np.ones(2, np.float32)}
        return request
"""

NOTHING = """
import udl

class Nothing(udl.Plugin):
    def load(self, config):
        self.ready = True
"""

#: postprocess answers with what it received of the request.
SEES_REQUEST = """
import json
import udl

class SeesRequest(udl.Plugin):
    def postprocess(self, response, request):
        response.payload = json.dumps({
            "tensors": sorted(request.tensors), "payload": request.payload.decode(),
            "parameters": request.parameters, "request_id": request.request_id,
        }).encode()
        return response
"""

USES_UTILS = """
import udl
import utils

class UsesUtils(udl.Plugin):
    def postprocess(self, response, request):
        response.payload = utils.WHO.encode()
        return response
"""


def write_plugin(
    root: Path,
    name: str,
    version: str,
    module: str,
    source: str,
    cls: str,
    executor: str = "thread",
    timeout_s: float = 5.0,
    extra: dict[str, str] | None = None,
) -> Path:
    folder = root / f"{name}-{version}"
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text(
        f'name = "{name}"\nversion = "{version}"\nentrypoint = "{module}:{cls}"\n'
        f'executor = "{executor}"\ntimeout_s = {timeout_s}\n'
        # NOTE: a worker process starts in ~0.5 s, more on a busy machine
        "[timeouts]\nload = 60.0\n"
    )
    (folder / f"{module}.py").write_text(source)
    for filename, text in (extra or {}).items():
        (folder / filename).write_text(text)
    return folder


def packed(folder: Path) -> tuple[bytes, str]:
    data = pack(folder)
    return data, hashlib.sha256(data).hexdigest()
