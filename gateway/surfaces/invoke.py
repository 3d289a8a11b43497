"""``modelgate.v1.Gateway``: Invoke (plugin models, the JSON tensor codec, REST services) and
ListModels."""

from __future__ import annotations

import grpc

import udl
from gateway.backends.wire import parse
from gateway.errors import InvalidArgumentError, capped
from gateway.flow import JSON_FLOW
from gateway.surfaces.base import CallInfo, Core, split_version
from gateway.table import Instance
from protos.modelgate.v1 import gateway_pb2
from registry.logs import set_call

SURFACE = "invoke"
SERVICE = "modelgate.v1.Gateway"


class GatewaySurface:
    def __init__(self, core: Core) -> None:
        self.core = core

    def handler(self) -> grpc.GenericRpcHandler:
        u = self.core.unary
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Invoke": u(SURFACE, self.invoke, serializer=_serialize),
                "ListModels": u(SURFACE, self.list_models, serializer=_serialize),
            },
        )

    async def list_models(self, request: bytes, context: object, info: CallInfo) -> object:
        req = parse(gateway_pb2.ListModelsRequest, request, "ListModelsRequest")
        out = gateway_pb2.ListModelsResponse()
        for name, entry in sorted(self.core.router.table.models.items()):
            if req.group and entry.record.group != req.group:
                continue
            weights = entry.weights()
            total = sum(weights.values()) or 1
            info_ = out.models.add(
                name=name,
                backend=entry.kind,
                ready_instances=entry.ready_instances,
                plugin=entry.record.plugin or "",
                group=entry.record.group,
                state=entry.record.state,
            )
            for v, ventry in entry.versions.items():
                info_.versions.add(
                    version=str(v),
                    labels=list(ventry.labels),
                    weight=round(100 * weights.get(v, 0) / total),
                    ready_instances=len(ventry.instances),
                )
        return out

    async def invoke(
        self, request: bytes, context: grpc.aio.ServicerContext, info: CallInfo
    ) -> object:
        req = parse(gateway_pb2.InvokeRequest, request, "InvokeRequest")
        if not req.model:
            raise InvalidArgumentError("InvokeRequest.model is empty")
        version, label = split_version(req.version)
        if req.version and version is None:
            raise InvalidArgumentError(
                f"InvokeRequest.version {capped(req.version)!r} is not a number"
            )
        target = await self.core.admit(
            info, context, req.model, version, label or req.version_label or None
        )
        name, v = target.model.name, target.version.version
        request_id = req.request_id or self.core.request_id()
        set_call(name, str(v), request_id)
        md = self.core.forward_metadata(context)

        if target.model.kind == "rest":
            service = self.core.router.service(name)
            limit = service.timeout_s if service else self.core.default_timeout

            async def post(instance: Instance, budget: float) -> tuple[bytes, str]:
                return await self.core.backends.rest.post(
                    instance.address, req.payload, req.content_type, min(budget, limit)
                )

            payload, content_type = await self.core.call(target, post, context, info)
            return gateway_pb2.InvokeResponse(
                model=name,
                version=str(v),
                payload=payload,
                content_type=content_type,
                request_id=request_id,
            )

        response = await self.core.infer_flow(
            target,
            udl.Request(
                model=name,
                payload=req.payload,
                content_type=req.content_type,
                parameters=dict(req.parameters),
                metadata={k: v for k, v in md or () if isinstance(v, str)},
                request_id=request_id,
            ),
            context,
            info,
        )
        if not response.payload and response.tensors:
            # NOTE: a plugin that only preprocesses still answers, in the JSON codec
            response = await JSON_FLOW.postprocess(response, udl.Request(model=name))
        return gateway_pb2.InvokeResponse(
            model=name,
            version=str(v),
            payload=response.payload,
            content_type=response.content_type,
            request_id=request_id,
        )


def _serialize(message: object) -> bytes:
    return message.SerializeToString()  # type: ignore[attr-defined]
