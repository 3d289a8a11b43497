"""TF-Serving backends: method paths, the version pin for forwarded requests, and
:class:`TFServingBackend` (TF-Serving calls forwarded, KServe calls translated)."""

from __future__ import annotations

from functools import lru_cache

from gateway import codec, translate
from gateway.backends.base import Backend, Call, TensorCall
from gateway.backends.channels import ChannelPool
from gateway.backends.wire import length_delimited, parse, varint_field
from gateway.errors import UnimplementedError
from gateway.table import Instance
from protos.tfs.tensorflow_serving.apis import predict_pb2

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


class TFServingBackend(Backend):
    """An instance that speaks ``tensorflow.serving.PredictionService``."""

    def __init__(self, pool: ChannelPool) -> None:
        self.pool = pool

    async def _forward(self, call: Call, instance: Instance, budget: float) -> bytes:
        """As the caller sent it (version pinned): TF-Serving answers its own API."""
        return await self.pool.call(
            instance.address, method(call.method), call.forward, budget, call.metadata
        )

    tfs_predict = tfs_metadata = tfs_only = _forward

    async def kserve_infer(self, call: Call, instance: Instance, budget: float) -> bytes:
        body, requested, request_id = call.translated(translate.infer_to_predict)
        response = await self.pool.call(instance.address, PREDICT, body, budget, call.metadata)
        return translate.predict_response_to_infer(
            response, call.model, call.version, requested, request_id
        )

    async def kserve_metadata(self, call: Call, instance: Instance, budget: float) -> bytes:
        response = await self.pool.call(
            instance.address,
            GET_MODEL_METADATA,
            translate.metadata_request_to_tf(call.model, call.version),
            budget,
            call.metadata,
        )
        return translate.tf_metadata_to_kserve(response, call.model, call.version)

    async def kserve_only(self, call: Call, instance: Instance, budget: float) -> bytes:
        raise UnimplementedError(
            f"model {call.model!r} is served by TF-Serving: "
            f"{call.method} is available for KServe models only"
        )

    async def infer(self, call: TensorCall, instance: Instance, budget: float) -> codec.Named:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = call.model
        request.model_spec.version.value = call.version
        for name, arr in call.inputs:
            request.inputs[name].CopyFrom(codec.array_to_tf(name, arr))
        request.output_filter.extend(call.outputs)
        data = await self.pool.call(
            instance.address, PREDICT, request.SerializeToString(), budget, call.metadata
        )
        response = parse(predict_pb2.PredictResponse, data, "PredictResponse from the backend")
        arrays = {k: codec.tf_to_array(k, t) for k, t in response.outputs.items()}
        return codec.select(call.model, arrays, list(call.outputs))
