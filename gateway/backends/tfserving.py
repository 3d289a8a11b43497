"""TF-Serving backends: method paths and the version pin for forwarded requests."""

from __future__ import annotations

from functools import lru_cache

from gateway.backends.wire import length_delimited, varint_field

SERVICE = "tensorflow.serving.PredictionService"


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


PREDICT = method("Predict")
GET_MODEL_METADATA = method("GetModelMetadata")


@lru_cache(maxsize=1024)
def version_suffix(version: int) -> bytes:
    """Bytes that set ``model_spec.version`` (field 1 -> field 2 Int64Value) when appended.

    ``version`` and ``version_label`` share a oneof, so this also clears a label.
    """
    return length_delimited(1, length_delimited(2, varint_field(1, version)))
