"""KServe v2 backends (Triton): method paths, the version pin for forwarded requests, and
:class:`TritonBackend` (KServe calls forwarded, TF-Serving calls translated)."""

from __future__ import annotations

from functools import lru_cache

from tritonclient.grpc import service_pb2 as kserve

from gateway import codec, translate
from gateway.backends.base import Backend, Call, TensorCall
from gateway.backends.channels import ChannelPool
from gateway.backends.wire import length_delimited, parse
from gateway.errors import UnimplementedError
from gateway.table import Instance

SERVICE = "inference.GRPCInferenceService"


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


MODEL_INFER = method("ModelInfer")
MODEL_METADATA = method("ModelMetadata")


@lru_cache(maxsize=1024)
def version_suffix(version: int) -> bytes:
    """Bytes that set ``model_version`` (field 2 of ModelInferRequest, ModelMetadataRequest,
    ModelReadyRequest, ModelConfigRequest, ModelStatisticsRequest) when appended."""
    return length_delimited(2, str(version).encode())


class TritonBackend(Backend):
    """An instance that speaks KServe v2 (``inference.GRPCInferenceService``)."""

    def __init__(self, pool: ChannelPool) -> None:
        self.pool = pool

    async def tfs_predict(self, call: Call, instance: Instance, budget: float) -> bytes:
        body, signature = call.translated(translate.predict_to_infer)
        response = await self.pool.call(instance.address, MODEL_INFER, body, budget, call.metadata)
        return translate.infer_response_to_predict(response, call.model, call.version, signature)

    async def tfs_metadata(self, call: Call, instance: Instance, budget: float) -> bytes:
        request = kserve.ModelMetadataRequest(name=call.model, version=str(call.version))
        response = await self.pool.call(
            instance.address, MODEL_METADATA, request.SerializeToString(), budget, call.metadata
        )
        return translate.kserve_metadata_to_tf(response, call.model, call.version)

    async def tfs_only(self, call: Call, instance: Instance, budget: float) -> bytes:
        raise UnimplementedError(
            f"model {call.model!r} is served by Triton (KServe v2): {call.method} is "
            "available for TF-Serving models only; use Predict or KServe ModelInfer"
        )

    async def _forward(self, call: Call, instance: Instance, budget: float) -> bytes:
        """As the caller sent it (version pinned): Triton answers its own API."""
        return await self.pool.call(
            instance.address, method(call.method), call.forward, budget, call.metadata
        )

    kserve_infer = kserve_metadata = kserve_only = _forward

    async def infer(self, call: TensorCall, instance: Instance, budget: float) -> codec.Named:
        request = kserve.ModelInferRequest(
            model_name=call.model, model_version=str(call.version), id=call.request_id
        )
        codec.add_kserve_inputs(request, call.inputs)
        for name in call.outputs:
            request.outputs.add(name=name)
        data = await self.pool.call(
            instance.address, MODEL_INFER, request.SerializeToString(), budget, call.metadata
        )
        return codec.kserve_response_outputs(
            parse(kserve.ModelInferResponse, data, "ModelInferResponse from the backend")
        )
