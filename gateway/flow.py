"""How ``Invoke`` turns a payload into tensors and back: the pre/post-processing seam.

Today every model without a plugin uses :class:`JsonCodecFlow`. NOTE: this is where UDL
plugins plug in (the UDL issue): :func:`flow_for` will return a flow that runs the model's
plugin ``preprocess``/``postprocess`` around the same backend call.
"""

from __future__ import annotations

from typing import Protocol

from gateway import codec
from gateway.errors import InvalidArgumentError, UnimplementedError
from gateway.table import ModelEntry

JSON = "application/json"


class Flow(Protocol):
    def preprocess(self, payload: bytes, content_type: str) -> codec.Named: ...

    def postprocess(self, model: str, version: int, outputs: codec.Named) -> tuple[bytes, str]: ...


class JsonCodecFlow:
    """``{"inputs": [{"name", "shape", "datatype", "data"}]}`` in, same style out."""

    def preprocess(self, payload: bytes, content_type: str) -> codec.Named:
        if content_type and content_type.split(";")[0].strip().lower() != JSON:
            raise InvalidArgumentError(
                f"content type {content_type!r} needs a plugin; models without one accept "
                f"{JSON} tensors"
            )
        return codec.json_to_tensors(payload)

    def postprocess(self, model: str, version: int, outputs: codec.Named) -> tuple[bytes, str]:
        return codec.tensors_to_json(model, str(version), outputs), JSON


_JSON_FLOW = JsonCodecFlow()


def flow_for(entry: ModelEntry) -> Flow:
    if entry.record.plugin:
        raise UnimplementedError(
            f"model {entry.name!r} uses plugin {entry.record.plugin}; plugin flows are not "
            "available in this gateway version"
        )
    return _JSON_FLOW
