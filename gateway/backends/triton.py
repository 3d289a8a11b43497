"""KServe v2 backends (Triton): method paths and the version pin for forwarded requests."""

from __future__ import annotations

from functools import lru_cache

from gateway.backends.wire import length_delimited

SERVICE = "inference.GRPCInferenceService"


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


MODEL_INFER = method("ModelInfer")
MODEL_METADATA = method("ModelMetadata")
MODEL_CONFIG = method("ModelConfig")
MODEL_STATISTICS = method("ModelStatistics")
MODEL_READY = method("ModelReady")


@lru_cache(maxsize=1024)
def version_suffix(version: int) -> bytes:
    """Bytes that set ``model_version`` (field 2 of ModelInferRequest, ModelMetadataRequest,
    ModelReadyRequest, ModelConfigRequest, ModelStatisticsRequest) when appended."""
    return length_delimited(2, str(version).encode())
