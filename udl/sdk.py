"""The plugin SDK: what a plugin author subclasses and receives.

A plugin turns a caller's request into the tensors a model expects (``preprocess``) and
the model's tensors into the caller's answer (``postprocess``). Every hook may be a plain
function or ``async def``; which one is decided once, when the plugin is loaded.

.. code-block:: python

    import json
    import udl

    class Plugin(udl.Plugin):
        def load(self, config):
            self.labels = config["labels"]

        def preprocess(self, request):
            pixels = json.loads(request.payload)["pixels"]
            request.tensors = {"INPUT0": numpy.asarray(pixels, dtype="float32")}
            return request

        def postprocess(self, response, request):
            best = int(response.tensors["OUTPUT0"].argmax())
            response.payload = json.dumps({"label": self.labels[best]}).encode()
            response.content_type = "application/json"
            return response
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from registry.errors import InvalidArgumentError, ModelgateError


class InvalidInput(InvalidArgumentError):
    """Raise from a hook when the caller's input is wrong; the caller gets INVALID_ARGUMENT
    with this message (so say what is wrong and how to fix it)."""


class PluginError(ModelgateError):
    """A plugin failed (bug, timeout, failed load). Callers see the plugin, stage and request
    id, never the traceback."""


@dataclass
class Request:
    """A call on its way to the model.

    Attributes:
        model: the model name the caller asked for.
        version: the version chosen for this call (None until routing picked one).
        tensors: input tensors by name; what ``preprocess`` returns here is sent to the
            backend (Triton or TF-Serving alike). Tensors decoded from the caller's message
            are read-only views of its bytes: build new arrays rather than writing into them.
        payload: the raw body of an ``Invoke`` call (empty on tensor surfaces).
        content_type: MIME type of ``payload``, e.g. ``image/png``.
        parameters: string parameters of the call (``Invoke.parameters``).
        metadata: gRPC call metadata (lower-case keys).
        request_id: the id to quote in logs and errors.
    """

    model: str
    version: int | None = None
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    payload: bytes = b""
    content_type: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    request_id: str = ""


@dataclass
class Response:
    """The model's answer on its way back to the caller.

    Attributes:
        model: the model that answered.
        version: the version that answered.
        tensors: output tensors by name, as the backend returned them.
        payload: the body returned to an ``Invoke`` caller; set it in ``postprocess``.
        content_type: MIME type of ``payload``.
        parameters: string parameters to return with the answer.
    """

    model: str
    version: int | None = None
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    payload: bytes = b""
    content_type: str = ""
    parameters: dict[str, str] = field(default_factory=dict)


class Plugin:
    """Base class of a plugin. Override what you need; the defaults pass data through.

    One instance serves many concurrent calls: keep per-call state in the request, not on
    ``self``. Hooks may be ``async def``; the gateway awaits those on its event loop and runs
    plain ones in a thread pool or worker processes (``executor`` in ``plugin.toml``). A
    ``preprocess`` or ``postprocess`` that a subclass does not override is skipped.
    """

    def load(self, config: dict[str, Any]) -> None:
        """Called once before any call, with the model's ``plugin_config``. Load files and
        build lookup tables here; raise to refuse the version (the previous one keeps
        serving)."""

    def preprocess(self, request: Request) -> Request:
        """Turn the caller's request into the model's input tensors (``request.tensors``)."""
        return request

    def postprocess(self, response: Response, request: Request) -> Response:
        """Turn the model's output tensors into the caller's answer.

        ``request`` is what ``preprocess`` returned; with the ``process`` executor its
        ``tensors`` are left out (they stay in the gateway), everything else is there.
        """
        return response

    def unload(self) -> None:
        """Called once when this plugin version is replaced or the gateway stops."""
