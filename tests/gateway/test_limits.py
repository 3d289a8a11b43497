"""Per-model limits (``Model.limits``): a flooded model is refused with RESOURCE_EXHAUSTED and
retry pushback while every call of another model answers, on both data planes (HAProxy
enforces the limits of a limited model on its fast path, the Python gateway those it cannot
express); plus the token bucket on a fake clock."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2 as kserve

from gateway.dataplane.config import PYTHON_BACKEND
from gateway.limits import CONCURRENCY_PUSHBACK_MS, PUSHBACK, LimitedError, ModelLimits
from gateway.metrics import GatewayMetrics
from gateway.table import ModelEntry
from registry.records import Limits, Model
from tests.gateway.conftest import ADD_ONE, RunningGateway, put_model, put_route, put_version
from tests.gateway.test_dataplane import HAPROXY_ONLY, fast_path_calls, programmed, sessions
from tests.gateway.test_shutdown import SLOW, slow_triton  # noqa: F401  (a fixture)
from tests.gateway.test_workers import Gateway2
from tests.servers.zk import wait_for

INFER = "/inference.GRPCInferenceService/ModelInfer"


def infer_request(model: str, value: float) -> bytes:
    """A KServe ModelInfer of version 1 of ``model`` with INPUT0 = [value] (FP32)."""
    request = kserve.ModelInferRequest(model_name=model, model_version="1")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
    request.raw_input_contents.append(np.array([value], dtype=np.float32).tobytes())
    return request.SerializeToString()


def flood(address: str, calls: list[bytes]) -> list[grpc.Future]:
    """Send every call at once (one channel, each a stream of its own); their futures."""
    channel = grpc.insecure_channel(address)
    method = channel.unary_unary(INFER)
    futures = [method.future(call, timeout=30) for call in calls]
    for future in futures:
        future.exception()  # waits for the answer
    channel.close()
    return futures


def flood_of(address: str, model: str, calls: int, value: float = 1.0) -> list[grpc.Future]:
    """``calls`` alike calls of ``model`` with INPUT0 = [value], all at once (:func:`flood`)."""
    return flood(address, [infer_request(model, value) for _ in range(calls)])


def refused(futures: list[grpc.Future]) -> list[grpc.Future]:
    return [f for f in futures if f.code() != grpc.StatusCode.OK]


def pushback(future: grpc.Future) -> int:
    return int(dict(future.trailing_metadata() or ())[PUSHBACK])


def limit(gateway, name: str, check: Callable[[Model], bool]) -> None:
    wait_for(
        lambda: (
            name in gateway.app.router.table.models
            and check(gateway.app.router.table.models[name].record)
            and gateway.instances(name) == 1
        ),
        what=f"the gateway to see {name}'s record",
    )
    if gateway.app.dataplane is not None:
        programmed(gateway)


def limited(
    registry,
    gateway,
    name: str,
    address: str,
    limits: Limits,
    check: Callable[[Model], bool] = lambda r: r.limits is not None,
) -> None:
    """``name`` version 1 served at ``address`` with ``limits``, once the gateway applies them."""
    put_model(registry, name, limits=limits)
    put_version(registry, name, 1)
    put_route(registry, name, 1, "worker-a", address)
    limit(gateway, name, check)


def to_python(gateway: RunningGateway) -> int:
    """Calls HAProxy sent to the Python gateway (0 with --dataplane python)."""
    return 0 if gateway.app.dataplane is None else sessions(gateway)[PYTHON_BACKEND]


def test_a_flooded_model_is_refused_and_another_model_always_answers(
    registry,
    gateway,
    triton_a,
    slow_triton,  # noqa: F811
):
    limited(registry, gateway, SLOW, slow_triton.address, Limits(max_concurrency=2))
    put_model(registry, ADD_ONE)
    put_version(registry, ADD_ONE, 1)
    put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)
    wait_for(lambda: gateway.instances(ADD_ONE) == 1, what="add_one's route")

    python_calls = to_python(gateway)

    # NOTE: 20x A's limit, each call of A held 0.5 s by the model; B interleaved with them
    calls = [infer_request(SLOW, 0.5) for _ in range(40)]
    calls += [infer_request(ADD_ONE, float(n)) for n in range(40)]
    answers = flood(gateway.address, calls)
    a, b = answers[:40], answers[40:]
    if gateway.app.dataplane is not None:  # HAProxy admitted, refused and served them all
        assert to_python(gateway) == python_calls
        assert fast_path_calls(gateway) == 40 + len(a) - len(refused(a))

    assert [f.code() for f in b] == [grpc.StatusCode.OK] * 40
    for n, future in enumerate(b):
        out = kserve.ModelInferResponse.FromString(future.result())
        assert np.frombuffer(out.raw_output_contents[0], np.float32)[0] == n + 1.0
    rejected = refused(a)
    assert rejected, "40 calls at once over a max_concurrency of 2: some must be refused"
    assert len(a) - len(rejected) >= 1
    for future in rejected:
        assert future.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert future.details() == (f"model {SLOW!r}: 2 calls in flight, its max_concurrency of 2")
        assert pushback(future) == CONCURRENCY_PUSHBACK_MS
    labels = {"model": SLOW, "limit": "concurrency"}
    assert gateway.metric("modelgate_gateway_limited_total", labels) == len(rejected)
    answered = {"model": SLOW, "version": "1", "surface": "kserve", "code": "RESOURCE_EXHAUSTED"}
    assert gateway.metric("modelgate_gateway_requests_total", answered) == len(rejected)
    assert gateway.metric("modelgate_gateway_retries_total", {"model": SLOW}) == 0


def test_a_rate_limit_admits_what_its_bucket_holds(registry, gateway, triton_a):
    rate, burst = 5.0, 5
    limited(registry, gateway, ADD_ONE, triton_a.address, Limits(rate_limit=rate, burst=burst))

    python_calls = to_python(gateway)
    start = time.monotonic()
    answers = flood_of(gateway.address, ADD_ONE, 100)
    elapsed = time.monotonic() - start
    admitted = len(answers) - len(refused(answers))
    # NOTE: a full bucket at first, then at most `rate` more per second the flood lasted (on
    # the fast path: `rate` calls in any second, a window sliding over the flood)
    assert burst <= admitted <= burst + rate * elapsed + 1
    for future in refused(answers):
        assert future.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert future.details() == f"model {ADD_ONE!r}: over its rate_limit of 5 calls/s"
        assert 1 <= pushback(future) <= 1000 / rate
    labels = {"model": ADD_ONE, "limit": "rate"}
    assert gateway.metric("modelgate_gateway_limited_total", labels) == len(refused(answers))
    assert to_python(gateway) == python_calls  # a rate HAProxy enforces: the fast path's


def test_limits_change_live(registry, gateway, triton_a):
    limited(registry, gateway, ADD_ONE, triton_a.address, Limits(rate_limit=0.001, burst=1))
    first = flood_of(gateway.address, ADD_ONE, 5)
    assert len(refused(first)) == 4  # one token, and the next is 1,000 s away

    put_model(registry, ADD_ONE)  # limits off
    limit(gateway, ADD_ONE, lambda r: r.limits is None)
    unlimited = flood_of(gateway.address, ADD_ONE, 20)
    assert refused(unlimited) == []

    put_model(registry, ADD_ONE, limits=Limits(rate_limit=0.001, burst=2))
    limit(gateway, ADD_ONE, lambda r: r.limits is not None and r.limits.burst == 2)
    again = flood_of(gateway.address, ADD_ONE, 5)
    assert len(refused(again)) == 3


@HAPROXY_ONLY
def test_haproxy_limits_change_live_and_one_it_cannot_express_takes_the_python_path(
    registry,
    gateway,
    triton_a,
    slow_triton,  # noqa: F811
):
    limited(registry, gateway, SLOW, slow_triton.address, Limits(max_concurrency=2))
    pid = gateway.app.dataplane.supervisor.pid
    python_calls = to_python(gateway)

    def admitted_of(calls: int, model: str = SLOW, value: float = 0.5) -> int:
        answers = flood_of(gateway.address, model, calls, value)
        return calls - len(refused(answers))

    assert admitted_of(20) == 2
    put_model(registry, SLOW, limits=Limits(max_concurrency=5))  # a map entry set
    limit(gateway, SLOW, lambda r: r.limits == Limits(max_concurrency=5))
    assert admitted_of(20) == 5
    put_model(registry, SLOW)  # a map entry deleted
    limit(gateway, SLOW, lambda r: r.limits is None)
    assert admitted_of(8) == 8
    assert to_python(gateway) == python_calls
    assert gateway.app.dataplane.supervisor.pid == pid  # no restart, no reload

    # NOTE: under one call a second is beyond a one-second window: the Python path's bucket
    limited(registry, gateway, ADD_ONE, triton_a.address, Limits(rate_limit=0.5))
    assert admitted_of(5, ADD_ONE, 1.0) == 1
    assert to_python(gateway) == python_calls + 5


def test_each_streamed_call_is_limited_on_its_own(registry, gateway, triton_a):
    limited(registry, gateway, ADD_ONE, triton_a.address, Limits(rate_limit=0.001, burst=2))
    with grpc.insecure_channel(gateway.address) as channel:
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        requests = iter([infer_request(ADD_ONE, float(n)) for n in range(4)])
        answers = [kserve.ModelStreamInferResponse.FromString(a) for a in stream(requests)]
    assert [a.error_message for a in answers] == [
        "",
        "",
        f"model {ADD_ONE!r}: over its rate_limit of 0.001 calls/s",
        f"model {ADD_ONE!r}: over its rate_limit of 0.001 calls/s",
    ]
    labels = {"model": ADD_ONE, "limit": "rate"}
    assert gateway.metric("modelgate_gateway_limited_total", labels) == 2


def test_python_workers_share_a_limit(tmp_path, zookeeper, zk_root, registry, triton_a):
    put_model(registry, ADD_ONE, limits=Limits(rate_limit=0.001, burst=4))
    put_version(registry, ADD_ONE, 1)
    put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)
    gw = Gateway2(tmp_path, zookeeper, zk_root).serve()  # every process starts with the model
    try:
        answers = flood_of(gw.address, ADD_ONE, 20)
        rejected = refused(answers)
        # NOTE: 2 tokens in each of the 2 processes, whichever of them HAProxy chose
        assert 2 <= len(answers) - len(rejected) <= 4
        for future in rejected:
            assert future.details() == (
                f"model {ADD_ONE!r}: over its rate_limit of 0.001 calls/s (0.0005 calls/s in "
                "each of the gateway's 2 processes)"
            )
        assert gw.metric("modelgate_gateway_limited_total", model=ADD_ONE, limit="rate") == len(
            rejected
        )
    finally:
        gw.process.stop()


# -- the limits of one process, on a fake clock ------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def entry(name: str, limits: Limits | None) -> ModelEntry:
    return ModelEntry(name, Model(name=name, backend="triton", limits=limits), {}, {})


def admitted(limits: ModelLimits, model: ModelEntry, calls: int) -> int:
    n = 0
    for _ in range(calls):
        try:
            limits.admit(model)
            n += 1
        except LimitedError:
            pass
    return n


def test_the_bucket_refills_at_its_rate_up_to_its_burst():
    clock = Clock()
    limits = ModelLimits(GatewayMetrics(CollectorRegistry()), processes=1, clock=clock)
    model = entry("a", Limits(rate_limit=10, burst=3))
    limits.sync({"a": model}, ["a"])
    assert admitted(limits, model, 10) == 3
    clock.now += 0.5  # 5 tokens' worth, capped at 3
    assert admitted(limits, model, 10) == 3
    clock.now += 0.25
    assert admitted(limits, model, 10) == 2
    with pytest.raises(LimitedError) as err:
        limits.admit(model)
    assert err.value.pushback_ms == 50  # half a token left: the next is 0.05 s away


def test_limits_are_divided_among_the_python_processes():
    clock = Clock()
    limits = ModelLimits(GatewayMetrics(CollectorRegistry()), processes=4, clock=clock)
    model = entry("a", Limits(max_concurrency=10, rate_limit=40))
    limits.sync({"a": model}, ["a"])
    slots = [limits.admit(model) for _ in range(2)]  # 10 // 4
    with pytest.raises(LimitedError) as err:
        limits.admit(model)
    assert str(err.value) == (
        "model 'a': 2 calls in flight, its max_concurrency of 10 (2 in each of the gateway's 4 "
        "processes)"
    )
    for slot in slots:
        assert slot is not None
        slot.release()
    clock.now += 10
    assert admitted(limits, model, 100) == 2  # the concurrency share, none released
    one = entry("b", Limits(max_concurrency=1, rate_limit=1))
    limits.sync({"b": one}, ["b"])
    assert admitted(limits, one, 5) == 1  # never below one call and one token


def test_a_changed_limit_keeps_the_calls_in_flight():
    limits = ModelLimits(GatewayMetrics(CollectorRegistry()), processes=1, clock=Clock())
    model = entry("a", Limits(max_concurrency=3))
    limits.sync({"a": model}, ["a"])
    held = [limits.admit(model) for _ in range(3)]
    wider = entry("a", Limits(max_concurrency=4))
    limits.sync({"a": wider}, ["a"])
    assert admitted(limits, wider, 5) == 1
    for slot in held:
        assert slot is not None
        slot.release()
    assert admitted(limits, wider, 5) == 3
