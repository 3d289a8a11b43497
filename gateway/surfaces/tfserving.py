"""``tensorflow.serving.PredictionService`` on the gateway."""

from __future__ import annotations

import grpc

import udl
from gateway import codec, translate
from gateway.backends import tfserving
from gateway.backends.base import Api
from gateway.backends.wire import parse
from gateway.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ModelNotFoundError,
    NotFoundWords,
    capped,
)
from gateway.router import Target
from gateway.surfaces.base import CallInfo, Core, Handler
from gateway.surfaces.partial import TfsMultiRequest, TfsRequest
from gateway.table import ModelEntry
from protos.tfs.tensorflow_serving.apis import get_model_metadata_pb2, inference_pb2, predict_pb2

SURFACE = "tfserving"


class TFServingWords(NotFoundWords):
    """TF-Serving's own words for an unknown model, version or label, then modelgate's hint.

    TF-Serving answers an unknown label INVALID_ARGUMENT; the gateway keeps NOT_FOUND.
    """

    def model(self, name: str, version: int | None) -> ModelNotFoundError:
        request = (
            f"Latest({capped(name)})" if version is None else f"Specific({capped(name)}, {version})"
        )
        words = f"Servable not found for request: {request}"
        return ModelNotFoundError(self.peer(words, self.model_hint(name)))

    def version(self, name: str, version: int, known: str) -> ModelNotFoundError:
        words = f"Servable not found for request: Specific({capped(name)}, {version})"
        return ModelNotFoundError(self.peer(words, self.version_hint(name, version, known)))

    def label(self, name: str, label: str, known: str) -> ModelNotFoundError:
        words = f"Unrecognized servable version label: {capped(label)}"
        return ModelNotFoundError(self.peer(words, self.label_hint(name, label, known)))


WORDS = TFServingWords()


def signature_names(response: bytes) -> frozenset[str]:
    """The SignatureDef keys in a GetModelMetadataResponse."""
    resp = parse(get_model_metadata_pb2.GetModelMetadataResponse, response, "metadata")
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    if "signature_def" in resp.metadata:
        resp.metadata["signature_def"].Unpack(sigmap)
    return frozenset(sigmap.signature_def)


class TFServingSurface:
    def __init__(self, core: Core) -> None:
        self.core = core
        #: Signature names per (model, version), with the model's table entry they were
        #: fetched for: a table that changed that model re-derives its entry (a new object),
        #: which drops them; other models' changes keep them.
        self._signatures: dict[tuple[str, int], tuple[ModelEntry, frozenset[str]]] = {}

    def handler(self) -> grpc.GenericRpcHandler:
        u = self.core.unary
        return grpc.method_handlers_generic_handler(
            tfserving.SERVICE,
            {
                "Predict": u(SURFACE, self.predict),
                "Classify": u(SURFACE, self.forwarded("Classify", lambda b: b.tfs_only)),
                "Regress": u(SURFACE, self.forwarded("Regress", lambda b: b.tfs_only)),
                "GetModelMetadata": u(
                    SURFACE, self.forwarded("GetModelMetadata", lambda b: b.tfs_metadata)
                ),
                "MultiInference": u(SURFACE, self.multi_inference),
            },
        )

    async def _target(
        self, spec: object, context: grpc.aio.ServicerContext, info: CallInfo, what: str
    ) -> tuple[Target, int | None]:
        """The version a call goes to, once admitted (:meth:`Core.admit`)."""
        name = spec.name  # type: ignore[attr-defined]
        if not name:
            raise InvalidArgumentError(f"{what}: model_spec.name is empty")
        asked = spec.version.value if spec.HasField("version") else None  # type: ignore[attr-defined]
        label = spec.version_label or None  # type: ignore[attr-defined]
        return await self.core.admit(info, context, name, asked, label, WORDS), asked

    async def _check_signature(
        self, target: Target, signature: str, context: grpc.aio.ServicerContext, info: CallInfo
    ) -> None:
        """Refuse a ``signature_name`` the model version does not have, as TF-Serving does.

        The names come from the version's metadata, fetched once per change of the model.
        """
        name, v = target.model.name, target.version.version
        cached = self._signatures.get((name, v))
        if cached is not None and cached[0] is target.model:
            known = cached[1]
        else:
            body = translate.metadata_request_to_tf(name, v)
            response = await self.core.forward(
                target, "GetModelMetadata", body, body, lambda b: b.tfs_metadata, context, info
            )
            known = signature_names(response)
            self._signatures[(name, v)] = (target.model, known)
        if signature not in known:
            words = f'Serving signature key "{capped(signature)}" not found.'
            hint = f"model {name!r} version {v} has the signatures {', '.join(sorted(known))}"
            raise FailedPreconditionError(NotFoundWords.peer(words, capped(hint, 300)))

    async def predict(
        self, request: bytes, context: grpc.aio.ServicerContext, info: CallInfo
    ) -> bytes:
        head = parse(TfsRequest, request, "PredictRequest")
        target, asked = await self._target(head.model_spec, context, info, "PredictRequest")
        if head.model_spec.signature_name:
            await self._check_signature(target, head.model_spec.signature_name, context, info)
        if target.model.record.plugin:
            return await self._predict_with_plugin(request, target, context, info)
        pinned = self._pinned(request, asked, target)
        return await self.core.forward(
            target, "Predict", request, pinned, lambda b: b.tfs_predict, context, info
        )

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
                request_id=self.core.request_id(),
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

    @staticmethod
    def _pinned(request: bytes, asked: int | None, target: Target) -> bytes:
        v = target.version.version
        return request if asked == v else request + tfserving.version_suffix(v)

    def forwarded(self, method: str, api: Api) -> Handler:
        """A method of one ``model_spec`` that each backend answers by ``api``."""

        async def handler(
            request: bytes, context: grpc.aio.ServicerContext, info: CallInfo
        ) -> bytes:
            head = parse(TfsRequest, request, f"{method}Request")
            target, asked = await self._target(head.model_spec, context, info, f"{method}Request")
            pinned = self._pinned(request, asked, target)
            return await self.core.forward(target, method, request, pinned, api, context, info)

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
                f"MultiInferenceRequest tasks name several models {capped(str(sorted(names)))}; "
                "use one model"
            )
        target, asked = await self._target(
            head.tasks[0].model_spec, context, info, "MultiInferenceRequest"
        )
        v = target.version.version
        pinned = request
        if asked != v:  # NOTE: a repeated field cannot be pinned by appending; re-encode
            full = parse(inference_pb2.MultiInferenceRequest, request, "MultiInferenceRequest")
            for task in full.tasks:
                task.model_spec.version.value = v
            pinned = full.SerializeToString()
        return await self.core.forward(
            target, "MultiInference", request, pinned, lambda b: b.tfs_only, context, info
        )
