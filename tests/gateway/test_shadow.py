"""Shadow traffic against a real Triton: copies reach the shadow target, callers see the primary."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from gateway.settings import GatewaySettings
from gateway.shadow import agree
from protos.modelgate.v1 import gateway_pb2, gateway_pb2_grpc
from registry import Registry
from registry.records import Tolerance
from tests.gateway.conftest import (
    ADD_ONE,
    RunningGateway,
    inference_count,
    put_model,
    put_route,
    put_version,
    write_versions,
)
from tests.gateway.test_cache import backend_count, infer
from tests.gateway.test_plugins import CSV_PLUGIN, publish
from tests.servers.zk import wait_for
from worker_agent.tritonserver import TritonServer

#: A second model taking add_one's inputs (it adds 1, as add_one version 1 does).
TWIN = "add_one_twin"


@pytest.fixture(scope="module")
def twin(triton_a: TritonServer) -> TritonServer:
    write_versions(triton_a.model_repository, TWIN, {1: 1.0})
    client = triton_grpc.InferenceServerClient(triton_a.address)
    client.load_model(TWIN)
    assert client.is_model_ready(TWIN, "1")
    client.close()
    return triton_a


def serve_shadowed(registry: Registry, gateway: RunningGateway, triton: TritonServer,
                   shadow: dict[str, Any]) -> None:  # fmt: skip
    """add_one versions 1 and 2 on ``triton``, copied to ``shadow``."""
    put_model(registry, ADD_ONE, shadow=shadow)
    for v in (1, 2):
        put_version(registry, ADD_ONE, v)
        put_route(registry, ADD_ONE, v, "worker-a", triton.address)
    wait_for(
        lambda: (
            gateway.instances(ADD_ONE) == 2
            and gateway.app.router.table.models[ADD_ONE].record.shadow is not None
        ),
        what="the shadowed model in the gateway",
    )


def shadow_metric(gateway: RunningGateway, name: str, **labels: str) -> float:
    return gateway.metric(f"modelgate_gateway_shadow_{name}", {"model": ADD_ONE, **labels})


def test_copies_reach_another_version_and_the_caller_sees_the_primary(registry, triton_a, gateway):
    serve_shadowed(registry, gateway, triton_a, {"target": 2, "percent": 100})
    before = inference_count(triton_a.address, ADD_ONE, "2")
    answers = [infer(gateway, float(x), "1").tolist() for x in range(3)]
    assert answers == [[1.0], [2.0], [3.0]]  # version 1 adds 1; version 2 would add 10
    wait_for(
        lambda: shadow_metric(gateway, "agreement_total", target="2", outcome="disagree") == 3,
        what="three disagreeing shadow answers",
    )
    assert backend_count(triton_a, ADD_ONE, "2", before + 3) == before + 3
    assert shadow_metric(gateway, "calls_total", target="2") == 3
    assert shadow_metric(gateway, "latency_seconds_count", target="2") == 3
    assert shadow_metric(gateway, "agreement_total", target="2", outcome="agree") == 0


def test_a_numeric_tolerance_counts_close_answers_as_agreeing(registry, triton_a, gateway):
    tolerance = {"absolute": 9.5, "relative": 0.0}  # version 2 answers 9 more than version 1
    serve_shadowed(registry, gateway, triton_a, {"target": 2, "percent": 100,
                                                 "tolerance": tolerance})  # fmt: skip
    assert infer(gateway, 1.0, "1").tolist() == [2.0]
    wait_for(
        lambda: shadow_metric(gateway, "agreement_total", target="2", outcome="agree") == 1,
        what="an agreeing shadow answer",
    )


def test_copies_reach_another_model(registry, twin, gateway):
    serve_shadowed(registry, gateway, twin, {"target": TWIN, "percent": 100})
    put_model(registry, TWIN)
    put_version(registry, TWIN, 1)
    put_route(registry, TWIN, 1, "worker-a", twin.address)
    wait_for(lambda: gateway.instances(TWIN) == 1, what="the twin routed")
    before = inference_count(twin.address, TWIN, "1")
    assert infer(gateway, 4.0, "1").tolist() == [5.0]
    assert infer(gateway, 5.0, "1").tolist() == [6.0]
    wait_for(
        lambda: shadow_metric(gateway, "agreement_total", target=TWIN, outcome="agree") == 2,
        what="two agreeing shadow answers",
    )
    assert backend_count(twin, TWIN, "1", before + 2) == before + 2


def test_a_failing_shadow_never_fails_the_caller(registry, triton_a, gateway):
    serve_shadowed(registry, gateway, triton_a, {"target": 3, "percent": 100})  # no version 3
    assert [infer(gateway, 1.0, "1").tolist() for _ in range(2)] == [[2.0], [2.0]]
    wait_for(
        lambda: shadow_metric(gateway, "errors_total", target="3", code="NOT_FOUND") == 2,
        what="two failed shadow copies",
    )
    assert shadow_metric(gateway, "agreement_total", target="3", outcome="agree") == 0


@pytest.fixture
def silent_backend() -> Iterator[str]:
    """An address that accepts connections and never answers (a hung model server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def one_shadow_gateway(
    gateway_settings: GatewaySettings, registry: Registry
) -> Iterator[RunningGateway]:
    running = RunningGateway(gateway_settings.model_copy(update={"shadow_max_in_flight": 1}))
    yield running
    running.stop()


def test_a_hung_shadow_never_holds_the_caller_and_extra_copies_are_dropped(
    registry, triton_a, silent_backend, one_shadow_gateway
):
    gateway = one_shadow_gateway
    serve_shadowed(registry, gateway, triton_a, {"target": "hung", "percent": 100})
    put_model(registry, "hung")
    put_version(registry, "hung", 1)
    put_route(registry, "hung", 1, "worker-h", silent_backend)
    wait_for(lambda: gateway.instances("hung") == 1, what="the hung model routed")
    # the first copy waits on the silent backend (for the caller's 20 s budget) and holds the
    # one shadow slot; the callers get their answers all the same
    assert [infer(gateway, 2.0, "1").tolist() for _ in range(3)] == [[3.0]] * 3
    wait_for(lambda: shadow_metric(gateway, "calls_total", target="hung") == 1,
             what="the one copy sent")  # fmt: skip
    assert gateway.metric("modelgate_gateway_shadow_dropped_total", {"model": ADD_ONE}) == 2


def test_plugin_calls_are_copied_through_the_shadows_own_flow(
    registry, triton_a, gateway, tmp_path
):
    plugin = publish(registry, tmp_path, "csv", "1", CSV_PLUGIN)
    put_model(registry, ADD_ONE, plugin=plugin, plugin_config={"tag": "t"},
              shadow={"target": 2, "percent": 100})  # fmt: skip
    for v in (1, 2):
        put_version(registry, ADD_ONE, v)
        put_route(registry, ADD_ONE, v, "worker-a", triton_a.address)
    wait_for(lambda: gateway.instances(ADD_ONE) == 2, what="the plugin model routed")
    before = inference_count(triton_a.address, ADD_ONE, "2")
    # pinned to version 1 (version 2, the shadow, adds 10)
    with grpc.insecure_channel(gateway.address) as channel:
        answer = gateway_pb2_grpc.GatewayStub(channel).Invoke(
            gateway_pb2.InvokeRequest(model=ADD_ONE, version="1", payload=b"1,2"), timeout=20
        )
    assert answer.payload == b"t:2,3" and answer.version == "1"
    wait_for(
        lambda: shadow_metric(gateway, "agreement_total", target="2", outcome="disagree") == 1,
        what="a disagreeing shadow answer",
    )
    assert backend_count(triton_a, ADD_ONE, "2", before + 1) == before + 1


def test_agreement_compares_names_shapes_and_values():
    exact, close = Tolerance(), Tolerance(absolute=0.1)
    ours = [("y", np.array([1.0, 2.0], np.float32)), ("label", np.array([b"cat"], object))]
    assert agree(ours, list(reversed(ours)), exact)  # order does not matter
    nudged = [("y", np.array([1.05, 2.0], np.float32)), ours[1]]
    assert not agree(ours, nudged, exact) and agree(ours, nudged, close)
    assert not agree(ours, [ours[0], ("label", np.array([b"dog"], object))], close)
    assert not agree(ours, [("y", np.array([[1.0, 2.0]], np.float32)), ours[1]], close)  # shape
    assert not agree(ours, ours[:1], close)  # a missing output
    assert not agree(ours, [ours[0], ("other", ours[1][1])], close)  # another name
    flags = [("ok", np.array([True, False]))]
    assert agree(flags, flags, exact) and not agree(flags, [("ok", np.array([True, True]))], close)
