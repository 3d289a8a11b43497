"""``inference.GRPCInferenceService`` (KServe v2 / Triton) on the gateway."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
from tritonclient.grpc import service_pb2 as kserve

import udl
from gateway import codec
from gateway.backends import triton
from gateway.backends.base import Api
from gateway.backends.wire import length_delimited, parse
from gateway.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ModelgateError,
    ModelNotFoundError,
    NotFoundWords,
    capped,
    source_of,
    status_of,
)
from gateway.router import Target
from gateway.surfaces.base import CallInfo, Core, Handler, split_version
from gateway.surfaces.partial import KServeRequest

SURFACE = "kserve"
_MANAGER_HINT = (
    "the gateway does not load or unload models: deploy, undeploy or take models "
    "online/offline with the manager (REST API or the `modelgate` CLI)"
)
#: The Triton extensions (``ServerMetadata.extensions``) the gateway serves for
#: Triton-hosted models; see docs/gateway.md for what is left out and why.
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "parameters",
              "statistics")  # fmt: skip


class TritonWords(NotFoundWords):
    """Triton's own words (2.51) for an unknown model or version, then modelgate's hint.

    Triton has no version labels: an unknown label is worded by modelgate only.
    """

    def model(self, name: str, version: int | None) -> ModelNotFoundError:
        # NOTE: Triton words an unknown model the same with or without a version
        words = f"Request for unknown model: '{capped(name)}' is not found"
        return ModelNotFoundError(self.peer(words, self.model_hint(name)))

    def version(self, name: str, version: int, known: str) -> ModelNotFoundError:
        words = f"Request for unknown model: '{capped(name)}' version {version} is not found"
        return ModelNotFoundError(self.peer(words, self.version_hint(name, version, known)))


WORDS = TritonWords()


class KServeSurface:
    def __init__(self, core: Core) -> None:
        self.core = core

    def handler(self) -> grpc.GenericRpcHandler:
        u = self.core.unary
        return grpc.method_handlers_generic_handler(
            triton.SERVICE,
            {
                "ServerLive": u(SURFACE, self.server_live),
                "ServerReady": u(SURFACE, self.server_ready),
                "ServerMetadata": u(SURFACE, self.server_metadata),
                "ModelReady": u(SURFACE, self.model_ready),
                "ModelMetadata": u(
                    SURFACE, self.forwarded("ModelMetadata", lambda b: b.kserve_metadata)
                ),
                "ModelConfig": u(SURFACE, self.forwarded("ModelConfig", lambda b: b.kserve_only)),
                "ModelStatistics": u(
                    SURFACE, self.forwarded("ModelStatistics", lambda b: b.kserve_only)
                ),
                "ModelInfer": u(SURFACE, self.model_infer),
                "ModelStreamInfer": self.core.stream(SURFACE, self.stream_infer),
                "RepositoryIndex": u(SURFACE, self.repository_index),
                "RepositoryModelLoad": u(SURFACE, self.refuse),
                "RepositoryModelUnload": u(SURFACE, self.refuse),
            },
        )

    # -- server-level -------------------------------------------------------------------

    async def server_live(self, request: bytes, context: object, info: CallInfo) -> bytes:
        return kserve.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(self, request: bytes, context: object, info: CallInfo) -> bytes:
        ready = self.core.router.table.generation > 0
        return kserve.ServerReadyResponse(ready=ready).SerializeToString()

    async def server_metadata(self, request: bytes, context: object, info: CallInfo) -> bytes:
        return kserve.ServerMetadataResponse(
            name="modelgate", version=self.core.version, extensions=EXTENSIONS
        ).SerializeToString()

    async def refuse(self, request: bytes, context: object, info: CallInfo) -> bytes:
        raise FailedPreconditionError(_MANAGER_HINT)

    async def repository_index(self, request: bytes, context: object, info: CallInfo) -> bytes:
        req = parse(kserve.RepositoryIndexRequest, request, "RepositoryIndexRequest")
        out = kserve.RepositoryIndexResponse()
        for name, entry in sorted(self.core.router.table.models.items()):
            for v, ventry in entry.versions.items():
                ready = bool(ventry.instances)
                if req.ready and not ready:
                    continue
                out.models.add(
                    name=name,
                    version=str(v),
                    state="READY" if ready else "UNAVAILABLE",
                    reason="" if ready else "no ready instance",
                )
        return out.SerializeToString()

    # -- model-level --------------------------------------------------------------------

    @staticmethod
    def _head(request: bytes, what: str) -> KServeRequest:
        head = parse(KServeRequest, request, what)
        if not head.model_name:
            raise InvalidArgumentError(f"{what}: model name is empty")
        return head

    async def _target(
        self, request: bytes, context: grpc.aio.ServicerContext, info: CallInfo, what: str
    ) -> tuple[Target, str]:
        """The version a call goes to, once admitted (:meth:`Core.admit`)."""
        head = self._head(request, what)
        version, label = split_version(head.model_version)
        target = await self.core.admit(info, context, head.model_name, version, label, WORDS)
        return target, head.model_version

    async def model_ready(self, request: bytes, context: object, info: CallInfo) -> bytes:
        try:
            head = self._head(request, "ModelReadyRequest")
            version, label = split_version(head.model_version)
            target = self.core.resolve(info, head.model_name, version, label, WORDS)
            ready = bool(target.version.instances)
        except InvalidArgumentError:
            raise
        except ModelgateError:
            ready = False  # NOTE: as Triton does: unknown or unavailable is "not ready"
        return kserve.ModelReadyResponse(ready=ready).SerializeToString()

    @staticmethod
    def _pinned(request: bytes, asked: str, target: Target) -> bytes:
        v = target.version.version
        return request if asked == str(v) else request + triton.version_suffix(v)

    def forwarded(self, method: str, api: Api) -> Handler:
        """A model-level method that each backend answers by ``api``."""

        async def handler(
            request: bytes, context: grpc.aio.ServicerContext, info: CallInfo
        ) -> bytes:
            target, asked = await self._target(request, context, info, f"{method}Request")
            pinned = self._pinned(request, asked, target)
            return await self.core.forward(target, method, request, pinned, api, context, info)

        return handler

    async def model_infer(
        self, request: bytes, context: grpc.aio.ServicerContext, info: CallInfo
    ) -> bytes:
        target, asked = await self._target(request, context, info, "ModelInferRequest")
        return await self._infer(request, target, asked, context, info)

    async def _infer(
        self,
        request: bytes,
        target: Target,
        asked: str,
        context: grpc.aio.ServicerContext,
        info: CallInfo,
    ) -> bytes:
        if target.model.record.plugin:
            return await self._infer_with_plugin(request, target, context, info)
        pinned = self._pinned(request, asked, target)
        return await self.core.forward(
            target, "ModelInfer", request, pinned, lambda b: b.kserve_infer, context, info
        )

    async def _infer_with_plugin(
        self, request: bytes, target: Target, context: grpc.aio.ServicerContext, info: CallInfo
    ) -> bytes:
        """Decode the tensors, run the model's plugin around the backend call, re-encode."""
        req = parse(kserve.ModelInferRequest, request, "ModelInferRequest")
        response = await self.core.infer_flow(
            target,
            udl.Request(
                model=target.model.name,
                tensors=dict(codec.kserve_request_inputs(req)),
                parameters={k: _param_text(p) for k, p in req.parameters.items()},
                request_id=req.id or self.core.request_id(),
            ),
            context,
            info,
        )
        out = kserve.ModelInferResponse(
            model_name=target.model.name, model_version=str(response.version), id=req.id
        )
        codec.add_kserve_outputs(
            out, codec.select(target.model.name, response.tensors, [o.name for o in req.outputs])
        )
        return out.SerializeToString()

    async def stream_infer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Each streamed request is routed on its own; errors come back in-stream."""
        async for request in requests:
            info = CallInfo()
            code = grpc.StatusCode.UNKNOWN
            start = time.perf_counter()
            try:
                target, asked = await self._target(request, context, info, "ModelInferRequest")
                response = await self._infer(request, target, asked, context, info)
                code = grpc.StatusCode.OK
                yield length_delimited(2, response)  # ModelStreamInferResponse.infer_response
            except Exception as err:
                code, message = status_of(err, where="ModelStreamInfer")
                info.source = source_of(err)
                yield length_delimited(1, message.encode())  # .error_message
            finally:
                self.core.finish(SURFACE + "_stream", info, code, time.perf_counter() - start)


def _param_text(param: kserve.InferParameter) -> str:
    kind = param.WhichOneof("parameter_choice")
    return "" if kind is None else str(getattr(param, kind))
