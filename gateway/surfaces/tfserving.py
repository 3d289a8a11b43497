"""``tensorflow.serving.PredictionService`` on the gateway."""

from __future__ import annotations

import uuid

import grpc
from tritonclient.grpc import service_pb2 as kserve

import udl
from gateway import codec, translate
from gateway.backends import tfserving, triton
from gateway.backends.wire import parse
from gateway.errors import FailedPreconditionError, InvalidArgumentError, UnimplementedError
from gateway.router import Target
from gateway.surfaces.base import CallInfo, Core, Handler
from gateway.surfaces.partial import TfsMultiRequest, TfsRequest
from gateway.table import Instance
from protos.tfs.tensorflow_serving.apis import inference_pb2, predict_pb2

SURFACE = "tfserving"


class TFServingSurface:
    def __init__(self, core: Core) -> None:
        self.core = core

    def handler(self) -> grpc.GenericRpcHandler:
        u = self.core.unary
        return grpc.method_handlers_generic_handler(
            tfserving.SERVICE,
            {
                "Predict": u(SURFACE, self.predict),
                "Classify": u(SURFACE, self.passthrough("Classify")),
                "Regress": u(SURFACE, self.passthrough("Regress")),
                "GetModelMetadata": u(SURFACE, self.passthrough("GetModelMetadata")),
                "MultiInference": u(SURFACE, self.multi_inference),
            },
        )

    def _target(self, spec: object, info: CallInfo, what: str) -> tuple[Target, int | None]:
        name = spec.name  # type: ignore[attr-defined]
        if not name:
            raise InvalidArgumentError(f"{what}: model_spec.name is empty")
        asked = spec.version.value if spec.HasField("version") else None  # type: ignore[attr-defined]
        label = spec.version_label or None  # type: ignore[attr-defined]
        return self.core.resolve(info, name, asked, label), asked

    def _not_tfserving(self, target: Target, method: str) -> Exception:
        if target.model.kind == "rest":
            return FailedPreconditionError(
                f"model {target.model.name!r} is a third-party REST service: call it with Invoke"
            )
        return UnimplementedError(
            f"model {target.model.name!r} is served by Triton (KServe v2): {method} is "
            "available for TF-Serving models only; use Predict or KServe ModelInfer"
        )

    async def predict(
        self, request: bytes, context: grpc.aio.ServicerContext, info: CallInfo
    ) -> bytes:
        head = parse(TfsRequest, request, "PredictRequest")
        target, asked = self._target(head.model_spec, info, "PredictRequest")
        if target.model.record.plugin:
            return await self._predict_with_plugin(request, target, context, info)
        name, v = target.model.name, target.version.version
        payload = request if asked == v else request + tfserving.version_suffix(v)
        md = self.core.forward_metadata(context)
        translated: tuple[bytes, str] | None = None

        async def attempt(instance: Instance, budget: float) -> bytes:
            nonlocal translated
            if instance.protocol == "tfserving":
                return await self.core.pool.call(
                    instance.address, tfserving.PREDICT, payload, budget, md
                )
            if instance.protocol == "kserve":
                if translated is None:
                    translated = translate.predict_to_infer(request, name, v)
                body, signature = translated
                response = await self.core.pool.call(
                    instance.address, triton.MODEL_INFER, body, budget, md
                )
                return translate.infer_response_to_predict(response, name, v, signature)
            raise self._not_tfserving(target, "Predict")

        return await self.core.call(target, attempt, context, info)

    async def _predict_with_plugin(
        self, request: bytes, target: Target, context: grpc.aio.ServicerContext, info: CallInfo
    ) -> bytes:
        """Decode the tensors, run the model's plugin around the backend call, re-encode."""
        req = parse(predict_pb2.PredictRequest, request, "PredictRequest")
        response = await self.core.infer_flow(
            target,
            udl.Request(
                model=target.model.name,
                tensors={k: codec.tf_to_array(k, t) for k, t in sorted(req.inputs.items())},
                request_id=uuid.uuid4().hex,
            ),
            context,
            info,
        )
        out = predict_pb2.PredictResponse()
        out.model_spec.name = target.model.name
        out.model_spec.version.value = int(response.version or 0)
        out.model_spec.signature_name = req.model_spec.signature_name or "serving_default"
        for name, arr in codec.select(target.model.name, response.tensors, list(req.output_filter)):
            out.outputs[name].CopyFrom(codec.array_to_tf(name, arr))
        return out.SerializeToString()

    def passthrough(self, method_name: str) -> Handler:
        method = tfserving.method(method_name)

        async def handler(
            request: bytes, context: grpc.aio.ServicerContext, info: CallInfo
        ) -> bytes:
            head = parse(TfsRequest, request, f"{method_name}Request")
            target, asked = self._target(head.model_spec, info, f"{method_name}Request")
            v = target.version.version
            payload = request if asked == v else request + tfserving.version_suffix(v)
            md = self.core.forward_metadata(context)

            async def attempt(instance: Instance, budget: float) -> bytes:
                if instance.protocol == "kserve" and method_name == "GetModelMetadata":
                    name = target.model.name
                    request = kserve.ModelMetadataRequest(name=name, version=str(v))
                    response = await self.core.pool.call(
                        instance.address, triton.MODEL_METADATA, request.SerializeToString(),
                        budget, md,
                    )  # fmt: skip
                    return translate.kserve_metadata_to_tf(response, name, v)
                if instance.protocol != "tfserving":
                    raise self._not_tfserving(target, method_name)
                return await self.core.pool.call(instance.address, method, payload, budget, md)

            return await self.core.call(target, attempt, context, info)

        return handler

    async def multi_inference(
        self, request: bytes, context: grpc.aio.ServicerContext, info: CallInfo
    ) -> bytes:
        head = parse(TfsMultiRequest, request, "MultiInferenceRequest")
        if not head.tasks:
            raise InvalidArgumentError("MultiInferenceRequest has no tasks")
        names = {t.model_spec.name for t in head.tasks}
        if len(names) != 1:
            raise InvalidArgumentError(
                f"MultiInferenceRequest tasks name several models {sorted(names)}; use one model"
            )
        target, asked = self._target(head.tasks[0].model_spec, info, "MultiInferenceRequest")
        v = target.version.version
        payload = request
        if asked != v:  # NOTE: a repeated field cannot be pinned by appending; re-encode
            full = parse(inference_pb2.MultiInferenceRequest, request, "MultiInferenceRequest")
            for task in full.tasks:
                task.model_spec.version.value = v
            payload = full.SerializeToString()
        md = self.core.forward_metadata(context)
        method = tfserving.method("MultiInference")

        async def attempt(instance: Instance, budget: float) -> bytes:
            if instance.protocol != "tfserving":
                raise self._not_tfserving(target, "MultiInference")
            return await self.core.pool.call(instance.address, method, payload, budget, md)

        return await self.core.call(target, attempt, context, info)
