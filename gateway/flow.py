"""Pre/post-processing around a backend call: the JSON codec, or the model's UDL plugin.

A flow turns the caller's :class:`udl.Request` into input tensors (``preprocess``) and the
backend's output tensors into the caller's answer (``postprocess``):

- :class:`JsonCodecFlow` -- ``Invoke`` on a model without a plugin:
  ``{"inputs": [{"name", "shape", "datatype", "data"}]}`` in, same style out;
- :class:`PluginFlow` -- any surface on a model with a plugin (``Invoke`` payloads, or
  KServe/TF-Serving tensors), timed and counted per plugin and stage.
"""

from __future__ import annotations

import time
from typing import Protocol

import grpc
import numpy as np

from gateway import codec
from gateway.errors import InvalidArgumentError
from gateway.metrics import GatewayMetrics
from modelgate_client.tensors import quoted
from registry.errors import ModelgateError
from udl import Request, Response
from udl.loader import LoadedPlugin, PluginFailedError

JSON = "application/json"


class Flow(Protocol):
    async def preprocess(self, request: Request) -> Request: ...

    async def postprocess(self, response: Response, request: Request) -> Response: ...


class JsonCodecFlow:
    """``{"inputs": [{"name", "shape", "datatype", "data"}]}`` in, same style out."""

    async def preprocess(self, request: Request) -> Request:
        ctype = request.content_type.split(";")[0].strip().lower()
        if ctype and ctype != JSON:
            raise InvalidArgumentError(
                f"content type {request.content_type!r} needs a plugin; model "
                f"{request.model!r} has none and accepts {JSON} tensors"
            )
        request.tensors = dict(codec.json_to_tensors(request.payload))
        return request

    async def postprocess(self, response: Response, request: Request) -> Response:
        response.payload = codec.tensors_to_json(
            response.model, str(response.version), list(response.tensors.items())
        )
        response.content_type = JSON
        return response


JSON_FLOW = JsonCodecFlow()


class PluginFlow:
    """Runs one loaded plugin version's hooks, with per-stage metrics (one per version)."""

    def __init__(self, plugin: LoadedPlugin, metrics: GatewayMetrics) -> None:
        self.plugin = plugin
        self.metrics = metrics
        self._seconds = {
            stage: metrics.plugin_seconds.labels(plugin.key, stage) for stage in plugin.hooks
        }

    async def preprocess(self, request: Request) -> Request:
        start = time.perf_counter()
        try:
            request = await self.plugin.preprocess(request)
            if not request.tensors:
                raise PluginFailedError(
                    f"plugin {self.plugin.key} preprocess produced no input tensors "
                    f"(request {request.request_id})"
                )
            for name, tensor in request.tensors.items():
                # NOTE: the gateway cannot guess a datatype for plain Python values
                if not isinstance(tensor, np.ndarray):
                    raise PluginFailedError(
                        f"plugin {self.plugin.key} preprocess produced tensor {quoted(name)} "
                        f"as {type(tensor).__name__}, not a numpy array (request "
                        f"{request.request_id})"
                    )
            return request
        except Exception as err:
            self._count_error("preprocess", err)
            raise
        finally:
            self._observe("preprocess", start)

    async def postprocess(self, response: Response, request: Request) -> Response:
        start = time.perf_counter()
        try:
            return await self.plugin.postprocess(response, request)
        except Exception as err:
            self._count_error("postprocess", err)
            raise
        finally:
            self._observe("postprocess", start)

    def _observe(self, stage: str, start: float) -> None:
        seconds = self._seconds.get(stage)
        if seconds is not None:  # NOTE: a hook the plugin does not override does not run
            seconds.observe(time.perf_counter() - start)

    def _count_error(self, stage: str, err: Exception) -> None:
        code = type(err).grpc_code if isinstance(err, ModelgateError) else grpc.StatusCode.INTERNAL
        self.metrics.plugin_errors.labels(self.plugin.key, stage, code.name).inc()
