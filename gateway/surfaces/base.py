"""What every surface shares: the error/metrics wrapper around each handler, deadlines,
metadata forwarding, and the timed call through the router.

:meth:`Core.unary` / :meth:`Core.stream` wrap every handler of every surface: this is the
gateway's one place that maps exceptions to gRPC statuses (via :func:`gateway.errors.status_of`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from tritonclient.grpc import service_pb2 as kserve

import udl
from gateway import codec
from gateway.backends.base import Api, Call, TensorCall
from gateway.backends.channels import Metadata
from gateway.backends.kinds import Backends
from gateway.backends.wire import parse
from gateway.cache import (
    CACHED_METHODS,
    ResponseCache,
    bypassed,
    cache_key,
    decode_response,
    encode_response,
    flow_cache_key,
)
from gateway.coldstart import ColdStarts, scales_from_zero
from gateway.errors import (
    BackendStatusError,
    InvalidArgumentError,
    ModelNotFoundError,
    ModelUnavailableError,
    NotFoundWords,
    capped,
    source_of,
    status_of,
)
from gateway.limits import LimitedError, ModelLimit, ModelLimits
from gateway.metrics import GatewayMetrics
from gateway.plugins import PluginHost
from gateway.router import Router, Target
from gateway.shadow import SHADOWED_METHODS, DetachedContext, ShadowTraffic, request_copy
from gateway.table import Instance
from protos.tfs.tensorflow_serving.apis import prediction_service_pb2
from registry.logs import set_call
from registry.records import Model

log = logging.getLogger("gateway.surfaces")

T = TypeVar("T")

#: Caller metadata not forwarded to backends (transport-level or per-hop).
_HOP_HEADERS = frozenset(
    {"content-type", "user-agent", "te", "grpc-timeout", "grpc-accept-encoding",
     "grpc-encoding", "authorization", ":authority", "host"}
)  # fmt: skip


#: Metrics label of calls naming a model the gateway does not know.
UNKNOWN_MODEL = "_unknown"

#: modelgate's own words for an unknown model, version or label (the Invoke surface).
MODELGATE_WORDS = NotFoundWords()

_INT64_MAX = 2**63 - 1


def _request_types() -> dict[str, Any]:
    """Request message class of every method of the two peer APIs, by method name."""
    services = (
        kserve.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
    )
    types = {m.name: message_factory.GetMessageClass(m.input_type) for s in services
             for m in s.methods}  # fmt: skip
    assert len(types) == sum(len(s.methods) for s in services), "method names must be unique"
    return types


#: What :meth:`Core.forward` re-parses a request as when the backend answered INTERNAL.
REQUEST_TYPES = _request_types()


@dataclass
class CallInfo:
    """Filled in by a handler as it learns what the call is about (for metrics)."""

    model: str = ""
    version: str = ""
    #: Who decided a failed call's answer (:func:`gateway.errors.source_of`).
    source: str = "gateway"
    route_s: float = 0.0
    backend_s: float = 0.0
    preprocess_s: float = 0.0
    postprocess_s: float = 0.0
    #: The model's limit whose concurrency slot the call holds (released when it ends).
    slot: ModelLimit | None = None
    #: The call waited for the model's first instance (scale to zero).
    cold_start: bool = False


Handler = Callable[[Any, grpc.aio.ServicerContext, CallInfo], Awaitable[Any]]


def version_number(text: str) -> int | None:
    """``text`` as a version number if it is one (ASCII digits), else None."""
    if not (text.isascii() and text.isdigit()):
        return None
    if len(text) > 19 or int(text) > _INT64_MAX:
        raise InvalidArgumentError(f"version {capped(text)!r} is out of range (at most 2**63-1)")
    return int(text)


def split_version(text: str) -> tuple[int | None, str | None]:
    """KServe's ``model_version`` string: digits are a version, anything else a label."""
    if not text:
        return None, None
    version = version_number(text)
    return (version, None) if version is not None else (None, text)


Flow = Callable[..., Awaitable[udl.Response]]


def _behind_cache_and_shadow(flow: Flow) -> Flow:
    """:meth:`Core.infer_flow` behind the model's response cache, then copied to its shadow;
    as it is for a model with neither."""

    @functools.wraps(flow)
    def wrapped(
        core: Core,
        target: Target,
        request: udl.Request,
        context: grpc.aio.ServicerContext,
        info: CallInfo,
        *,
        outputs: Sequence[str] = (),
    ) -> Awaitable[udl.Response]:
        record = target.model.record
        if record.cache is None and record.shadow is None:
            return flow(core, target, request, context, info, outputs=outputs)
        return cached_or_shadowed(core, target, request, context, info, outputs)

    async def cached_or_shadowed(
        core: Core,
        target: Target,
        request: udl.Request,
        context: grpc.aio.ServicerContext,
        info: CallInfo,
        outputs: Sequence[str],
    ) -> udl.Response:
        record = target.model.record
        name = target.model.name
        spec, key = record.cache, ""
        if spec is not None:
            if bypassed(context.invocation_metadata()):
                core.metrics.cache_lookups.labels(name, "bypass").inc()
                spec = None
            else:
                key = flow_cache_key(target, request, outputs)
                cached = await core.cache.get(name, spec, key)
                if cached is not None:
                    return decode_response(cached)
        shadow = record.shadow
        copy: tuple[udl.Request, DetachedContext] | None = None
        if shadow is not None and core.shadow.admit(name, shadow):
            # NOTE: taken before the primary's plugin runs, which may change the request
            copy = (
                request_copy(request),
                DetachedContext(
                    tuple(context.invocation_metadata() or ()),
                    time.monotonic() + core.deadline(context) - core.clock(),
                ),
            )
        response = await flow(core, target, request, context, info, outputs=outputs)
        if spec is not None:
            try:
                await core.cache.put(name, spec, key, encode_response(response))
            except InvalidArgumentError as err:
                log.debug("model %s: answer not cached: %s", name, err)
        if shadow is not None and copy is not None:

            async def shadow_flow(
                t: Target, r: udl.Request, c: grpc.aio.ServicerContext
            ) -> udl.Response:
                return await flow(core, t, r, c, CallInfo(), outputs=outputs)

            core.shadow.copy_flow(target, shadow, shadow_flow, *copy, answer=response)
        return response

    return wrapped


class Core:
    """Shared dependencies of the surfaces."""

    def __init__(
        self,
        router: Router,
        backends: Backends,
        metrics: GatewayMetrics,
        plugins: PluginHost,
        cache: ResponseCache,
        shadow: ShadowTraffic,
        limits: ModelLimits,
        cold_starts: ColdStarts,
        *,
        default_timeout: float,
        version: str,
    ) -> None:
        self.router = router
        self.backends = backends
        self.metrics = metrics
        self.plugins = plugins
        self.cache = cache
        self.shadow = shadow
        self.limits = limits
        self.cold_starts = cold_starts
        self.default_timeout = default_timeout
        self.version = version
        self.clock = router.clock
        #: Metric children per (model, version, surface, code): labels() costs a lock and
        #: a dict lookup per metric per call otherwise.
        self._children: dict[tuple[str, str, str, grpc.StatusCode, str], tuple[Any, ...]] = {}
        #: Ids of calls that bring none: a random prefix per process and a counter
        #: (cheaper than a uuid per call).
        self._id_prefix = secrets.token_hex(6)
        self._id_count = itertools.count(1)

    # -- wrappers -----------------------------------------------------------------------

    def unary(
        self,
        surface: str,
        handler: Handler,
        deserializer: Callable[[bytes], Any] | None = None,
        serializer: Callable[[Any], bytes] | None = None,
    ) -> grpc.RpcMethodHandler:
        metrics = self.metrics
        in_flight = metrics.in_flight.labels(surface)

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            info = CallInfo()
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            in_flight.inc()
            try:
                return await handler(request, context, info)
            except asyncio.CancelledError:
                # NOTE: the caller went away or its deadline passed; grpc cancels the task
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                raise
            except Exception as err:
                code, message = status_of(err, where=f"{surface} {info.model}")
                info.source = source_of(err)
                trailers = err.trailers if isinstance(err, LimitedError) else ()
                await context.abort(code, message, trailing_metadata=trailers)
            finally:
                in_flight.dec()
                self.finish(surface, info, code, time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=deserializer, response_serializer=serializer
        )

    def stream(
        self,
        surface: str,
        handler: Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], AsyncIterator[bytes]],
    ) -> grpc.RpcMethodHandler:
        async def call(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            try:
                async for response in handler(requests, context):
                    yield response
            except Exception as err:
                code, message = status_of(err, where=f"{surface} stream")
                await context.abort(code, message)

        return grpc.stream_stream_rpc_method_handler(call)

    def finish(self, surface: str, info: CallInfo, code: grpc.StatusCode, total: float) -> None:
        """A call ended: its concurrency slot given back, its metrics counted."""
        if info.slot is not None:
            info.slot.release()
        if info.model and info.model not in self.router.table.models:
            # NOTE: names come from callers; unknown ones share a label (bounded cardinality)
            info.model, info.version = UNKNOWN_MODEL, ""
        key = (info.model, info.version, surface, code, info.source)
        children = self._children.get(key)
        if children is None:
            m = self.metrics
            children = self._children[key] = (
                m.requests.labels(info.model, info.version, surface, code.name),
                None
                if code == grpc.StatusCode.OK
                else m.errors.labels(info.model, info.version, surface, code.name, info.source),
                m.latency.labels("total", info.model, surface),
                m.latency.labels("route", info.model, surface),
                m.latency.labels("backend", info.model, surface),
                m.latency.labels("preprocess", info.model, surface),
                m.latency.labels("postprocess", info.model, surface),
            )
            if len(self._children) > 10_000:  # NOTE: bound the cache (label churn)
                self._children.clear()
        requests, errors, total_h, route_h, backend_h, pre_h, post_h = children
        requests.inc()
        if errors is not None:
            errors.inc()
        total_h.observe(total)
        if info.route_s:
            route_h.observe(info.route_s)
        if info.backend_s:
            backend_h.observe(info.backend_s)
        if info.preprocess_s:
            pre_h.observe(info.preprocess_s)
        if info.postprocess_s:
            post_h.observe(info.postprocess_s)
        if info.cold_start and code == grpc.StatusCode.OK:
            self.metrics.cold_start.labels(info.model).observe(total)

    # -- helpers ------------------------------------------------------------------------

    def request_id(self) -> str:
        """A new request id, unique per gateway process and across processes in practice."""
        return f"{self._id_prefix}-{next(self._id_count)}"

    def deadline(self, context: grpc.aio.ServicerContext) -> float:
        """The caller's deadline on :attr:`clock` (or the default timeout from now)."""
        remaining = context.time_remaining()
        if remaining is None or remaining > 10 * 365 * 86400:
            remaining = self.default_timeout
        return self.clock() + remaining

    @staticmethod
    def forward_metadata(context: grpc.aio.ServicerContext) -> Metadata | None:
        md = context.invocation_metadata()
        if not md:
            return None
        kept = tuple((k, v) for k, v in md if k not in _HOP_HEADERS and not k.startswith("grpc-"))
        return kept or None

    @staticmethod
    def sticky_key(target: Target, context: grpc.aio.ServicerContext) -> str:
        header = target.model.record.sticky_header
        if target.model.record.policy != "sticky" or not header:
            return ""
        for key, value in context.invocation_metadata() or ():
            if key == header.lower():
                return value if isinstance(value, str) else value.decode(errors="replace")
        return ""

    def resolve(
        self,
        info: CallInfo,
        name: str,
        version: int | None,
        label: str | None,
        words: NotFoundWords = MODELGATE_WORDS,
    ) -> Target:
        """The version the call goes to; an unknown model, version or label in ``words``."""
        start = time.perf_counter()
        info.model = name
        set_call(capped(name), str(version) if version is not None else capped(label or ""))
        if version is None and label and label.isdigit():
            # NOTE: the router reads a label of digits as a version; only ASCII ones are
            if not label.isascii():
                raise self._not_found(name, None, label, words)
            version, label = version_number(label), None
        try:
            target = self.router.resolve(name, version, label)
        except ModelNotFoundError:
            raise self._not_found(name, version, label, words) from None
        info.version = str(target.version.version)
        set_call(name, info.version)
        info.route_s = time.perf_counter() - start
        return target

    async def admit(
        self,
        info: CallInfo,
        context: grpc.aio.ServicerContext,
        name: str,
        version: int | None,
        label: str | None,
        words: NotFoundWords = MODELGATE_WORDS,
    ) -> Target:
        """:meth:`resolve` for a call to a backend: within the model's limits (or
        :class:`~gateway.limits.LimitedError`), for a model scaled to zero once its first
        instance is ready, and for another online model without a ready instance after a
        short grace for one to appear (:class:`~gateway.coldstart.ColdStarts`).

        A model without limits pays one attribute check.
        """
        try:
            target = self.resolve(info, name, version, label, words)
        except ModelUnavailableError:
            entry = self.router.table.models.get(name)
            if entry is None or entry.record.state != "online":
                raise
            again = functools.partial(self.resolve, info, name, version, label, words)
            if not scales_from_zero(entry.record):
                target = await self.cold_starts.settle(name, again, self.deadline(context))
            else:
                if entry.record.limits is not None:
                    info.slot = self.limits.admit(entry)
                info.cold_start = True
                return await self.cold_starts.wait(
                    name, again, lambda: self._record(name), self.deadline(context)
                )
        if target.model.record.limits is not None:
            info.slot = self.limits.admit(target.model)
        return target

    def _record(self, name: str) -> Model | None:
        entry = self.router.table.models.get(name)
        return None if entry is None else entry.record

    def _not_found(
        self, name: str, version: int | None, label: str | None, words: NotFoundWords
    ) -> ModelNotFoundError:
        """Which of model, version or label is unknown, in the surface's words."""
        entry = self.router.table.models.get(name)
        if entry is None:
            return words.model(name, version)
        if version is None and label:
            return words.label(name, label, ", ".join(sorted(entry.labels)) or "none")
        known = ", ".join(str(v) for v in entry.versions) or "none"
        return words.version(name, version or 0, known)

    async def call(
        self,
        target: Target,
        attempt: Callable[[Instance, float], Awaitable[T]],
        context: grpc.aio.ServicerContext,
        info: CallInfo,
    ) -> T:
        """Run ``attempt`` through the router (failover) and time the backend stage."""

        async def timed(instance: Instance, budget: float) -> T:
            start = time.perf_counter()
            try:
                return await attempt(instance, budget)
            finally:
                info.backend_s += time.perf_counter() - start

        return await self.router.call(
            target, timed, deadline=self.deadline(context), key=self.sticky_key(target, context)
        )

    def forward(
        self,
        target: Target,
        method: str,
        request: bytes,
        pinned: bytes,
        api: Api,
        context: grpc.aio.ServicerContext,
        info: CallInfo,
    ) -> Awaitable[bytes]:
        """Route the caller's ``method`` call; each instance's backend answers it by ``api``.

        ``pinned`` is ``request`` with the chosen version set, for a backend of the caller's
        protocol; the others translate ``request``. A model with a response cache or shadow
        traffic goes through :meth:`_cached_or_shadowed`; the others pay one check (no
        coroutine of its own).
        """
        record = target.model.record
        if record.cache is None and record.shadow is None:
            return self._route(target, method, request, pinned, api, context, info)
        return self._cached_or_shadowed(target, method, request, pinned, api, context, info)

    async def _cached_or_shadowed(
        self,
        target: Target,
        method: str,
        request: bytes,
        pinned: bytes,
        api: Api,
        context: grpc.aio.ServicerContext,
        info: CallInfo,
    ) -> bytes:
        """:meth:`_route` behind the model's response cache, then copied to its shadow."""
        record = target.model.record
        name, v = target.model.name, target.version.version
        spec = record.cache if method in CACHED_METHODS else None
        key = ""
        if spec is not None:
            if bypassed(context.invocation_metadata()):
                self.metrics.cache_lookups.labels(name, "bypass").inc()
                spec = None
            else:
                key = cache_key(name, v, method, request)
                cached = await self.cache.get(name, spec, key)
                if cached is not None:
                    return cached
        budget_s = self.deadline(context) - self.clock()
        answer = await self._route(target, method, request, pinned, api, context, info)
        if spec is not None:
            await self.cache.put(name, spec, key, answer)
        shadow = record.shadow
        if shadow is not None and method in SHADOWED_METHODS and self.shadow.admit(name, shadow):
            md = self.forward_metadata(context)
            self.shadow.copy_call(target, shadow, method, request, answer, api, md, budget_s)
        return answer

    async def _route(
        self,
        target: Target,
        method: str,
        request: bytes,
        pinned: bytes,
        api: Api,
        context: grpc.aio.ServicerContext,
        info: CallInfo,
    ) -> bytes:
        v = target.version.version
        call = Call(target.model.name, v, method, request, pinned, self.forward_metadata(context))

        async def attempt(instance: Instance, budget: float) -> bytes:
            return await api(self.backends.of(instance))(call, instance, budget)

        try:
            return await self.call(target, attempt, context, info)
        except BackendStatusError as err:
            if err.code == grpc.StatusCode.INTERNAL:
                # NOTE: the partial parse reads the routing fields only, so bytes broken
                # elsewhere reach the backend, which answers INTERNAL ("Unable to parse
                # request"). Only then is the full parse paid: bytes that do not parse are
                # the caller's INVALID_ARGUMENT, not a server error.
                parse(REQUEST_TYPES[method], request, f"{method}Request")
            raise

    @_behind_cache_and_shadow
    async def infer_flow(
        self,
        target: Target,
        request: udl.Request,
        context: grpc.aio.ServicerContext,
        info: CallInfo,
        *,
        outputs: Sequence[str] = (),
    ) -> udl.Response:
        """preprocess -> backend (routed, with failover) -> postprocess, on decoded tensors.

        The flow is the model's plugin, or the JSON codec for ``Invoke`` without one.
        """
        name, v = target.model.name, target.version.version
        request.version = v
        md = self.forward_metadata(context)
        wait_s = self.deadline(context) - self.clock()
        async with self.plugins.flow(target.model, wait_s) as flow:
            start = time.perf_counter()
            try:
                request = await flow.preprocess(request)
            finally:
                info.preprocess_s = time.perf_counter() - start
            call = TensorCall(
                name, v, list(request.tensors.items()), request.request_id, md, outputs
            )

            async def attempt(instance: Instance, budget: float) -> codec.Named:
                return await self.backends.of(instance).infer(call, instance, budget)

            result = await self.call(target, attempt, context, info)
            response = udl.Response(model=name, version=v, tensors=dict(result))
            start = time.perf_counter()
            try:
                return await flow.postprocess(response, request)
            finally:
                info.postprocess_s = time.perf_counter() - start
