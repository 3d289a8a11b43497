"""Shadow traffic (``shadow: {target, percent, tolerance}`` on a model record).

After the primary answered a sampled call, a copy of the caller's request goes to the shadow
target (another version of the same model, or another model taking the same inputs) in a
task of its own: the caller already has the primary's answer and never waits for, or hears
of, the shadow. Passthrough calls (``ModelInfer``, ``Predict``) are copied as bytes pointed
at the shadow; plugin and ``Invoke`` calls run the shadow's own flow on a copy of the decoded
request. At most ``max_in_flight`` copies run at once; a copy over that is dropped and
counted. The shadow's output tensors are compared with the primary's (exactly, or within the
model's numeric tolerance) and the outcome counted, with the shadow's calls, errors and
latency.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as kserve

import udl
from gateway import codec
from gateway.backends import tfserving, triton
from gateway.backends.base import Api, Call
from gateway.backends.channels import Metadata
from gateway.backends.kinds import Backends
from gateway.backends.wire import length_delimited, parse
from gateway.errors import status_of
from gateway.metrics import GatewayMetrics
from gateway.router import Router, Target
from gateway.table import Instance
from protos.tfs.tensorflow_serving.apis import predict_pb2
from registry.records import Shadow, Tolerance

log = logging.getLogger("gateway.shadow")

T = TypeVar("T")


def _kserve_outputs(response: bytes) -> codec.Named:
    return codec.kserve_response_outputs(
        parse(kserve.ModelInferResponse, response, "ModelInferResponse")
    )


def _tfs_outputs(response: bytes) -> codec.Named:
    out = parse(predict_pb2.PredictResponse, response, "PredictResponse")
    return [(k, codec.tf_to_array(k, t)) for k, t in sorted(out.outputs.items())]


def _kserve_retarget(name: str, version: int) -> bytes:
    """Appended to a ModelInferRequest: sets ``model_name`` (field 1) and ``model_version``."""
    return length_delimited(1, name.encode()) + triton.version_suffix(version)


def _tfs_retarget(name: str, version: int) -> bytes:
    """Appended to a PredictRequest: merges ``model_spec`` (field 1) with a name and version
    (which clears a version label: they share a oneof)."""
    return length_delimited(1, length_delimited(1, name.encode())) + tfserving.version_suffix(
        version
    )


#: The caller methods copied to a shadow: how to point a request at another model version,
#: and how to read the output tensors of an answer.
SHADOWED_METHODS: dict[str, tuple[Callable[[str, int], bytes], Callable[[bytes], codec.Named]]] = {
    "ModelInfer": (_kserve_retarget, _kserve_outputs),
    "Predict": (_tfs_retarget, _tfs_outputs),
}


def responses_agree(primary: udl.Response, shadow: udl.Response, tolerance: Tolerance) -> bool:
    """:func:`agree` on two flows' answers: their tensors, and their payloads exactly."""
    same_tensors = agree(list(primary.tensors.items()), list(shadow.tensors.items()), tolerance)
    return same_tensors and primary.payload == shadow.payload


def agree(primary: codec.Named, shadow: codec.Named, tolerance: Tolerance) -> bool:
    """Whether the shadow's outputs match the primary's: same names and shapes, numeric values
    within ``tolerance`` (numpy ``allclose`` against the primary; NaN matches NaN), others
    exactly."""
    theirs = dict(shadow)
    if len(theirs) != len(primary):
        return False
    for name, ours in primary:
        other = theirs.get(name)
        if other is None or other.shape != ours.shape:
            return False
        if np.issubdtype(ours.dtype, np.number) and np.issubdtype(other.dtype, np.number):
            if not np.allclose(
                other, ours, rtol=tolerance.relative, atol=tolerance.absolute, equal_nan=True
            ):
                return False
        elif not np.array_equal(other, ours):
            return False
    return True


@dataclass(frozen=True)
class DetachedContext:
    """What a flow reads of its caller's context (metadata, time left), kept for a shadow copy
    that outlives the call."""

    metadata: tuple[tuple[str, str | bytes], ...]
    #: ``time.monotonic()`` value by which the copy must be answered.
    deadline: float

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.metadata

    def time_remaining(self) -> float:
        return self.deadline - time.monotonic()


def request_copy(request: udl.Request) -> udl.Request:
    """A copy of a flow's request the primary's plugin cannot change under the shadow."""
    return replace(
        request,
        tensors={k: v.copy() for k, v in request.tensors.items()},
        parameters=dict(request.parameters),
        metadata=dict(request.metadata),
    )


class ShadowTraffic:
    """Copies sampled calls to their model's shadow target, in the background."""

    def __init__(
        self,
        router: Router,
        backends: Backends,
        metrics: GatewayMetrics,
        max_in_flight: int,
    ) -> None:
        self.router = router
        self.backends = backends
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()

    def admit(self, model: str, shadow: Shadow) -> bool:
        """Whether to copy this call: sampled, and a copy may start (else dropped, counted)."""
        if random.random() * 100 >= shadow.percent:
            return False
        if len(self._tasks) >= self.max_in_flight:
            self.metrics.shadow_dropped.labels(model).inc()
            return False
        return True

    def copy_call(
        self,
        primary: Target,
        shadow: Shadow,
        method: str,
        request: bytes,
        answer: bytes,
        api: Api,
        metadata: Metadata | None,
        budget_s: float,
    ) -> None:
        """Send an admitted passthrough call of one of :data:`SHADOWED_METHODS` (``answer`` is
        the primary's) to the shadow."""
        retarget, outputs = SHADOWED_METHODS[method]

        async def send(target: Target) -> bytes:
            v = target.version.version
            body = request + retarget(target.model.name, v)
            call = Call(target.model.name, v, method, body, body, metadata)

            async def attempt(instance: Instance, budget: float) -> bytes:
                return await api(self.backends.of(instance))(call, instance, budget)

            return await self.router.call(target, attempt, deadline=self.router.clock() + budget_s)

        def same(theirs: bytes) -> bool:
            return agree(outputs(answer), outputs(theirs), shadow.tolerance)

        self._start(primary, shadow, send, same)

    def copy_flow(
        self,
        primary: Target,
        shadow: Shadow,
        flow: Callable[[Target, udl.Request, grpc.aio.ServicerContext], Awaitable[udl.Response]],
        request: udl.Request,
        context: DetachedContext,
        *,
        answer: udl.Response,
    ) -> None:
        """Run an admitted flow call's copy (``request``, taken before the primary ran) through
        the shadow's own flow; ``answer`` is the primary's."""

        async def send(target: Target) -> udl.Response:
            request.model = target.model.name
            return await flow(target, request, cast(grpc.aio.ServicerContext, context))

        def same(theirs: udl.Response) -> bool:
            return responses_agree(answer, theirs, shadow.tolerance)

        self._start(primary, shadow, send, same)

    async def stop(self) -> None:
        """Cancel the copies still running (on gateway shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _start(
        self,
        primary: Target,
        shadow: Shadow,
        send: Callable[[Target], Awaitable[T]],
        same: Callable[[T], bool],
    ) -> None:
        task = asyncio.create_task(self._copy(primary, shadow, send, same))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _copy(
        self,
        primary: Target,
        shadow: Shadow,
        send: Callable[[Target], Awaitable[Any]],
        same: Callable[[Any], bool],
    ) -> None:
        name = primary.model.name
        label = str(shadow.target)
        m = self.metrics
        m.shadow_calls.labels(name, label).inc()
        start = time.perf_counter()
        try:
            if isinstance(shadow.target, int):
                target = self.router.resolve(name, shadow.target)
            else:
                target = self.router.resolve(shadow.target)
            theirs = await send(target)
            m.shadow_latency.labels(name, label).observe(time.perf_counter() - start)
            agreed = same(theirs)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            code, message = status_of(err, where=f"shadow of {name} to {label}")
            m.shadow_errors.labels(name, label, code.name).inc()
            log.debug("shadow of %s to %s failed: %s", name, label, message)
            return
        m.shadow_agreement.labels(name, label, "agree" if agreed else "disagree").inc()
