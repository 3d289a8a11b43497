"""Routing through a real gateway to two real Triton instances (ZooKeeper written directly)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from registry import layout
from tests.gateway.conftest import (
    ADD_ONE,
    inference_count,
    put_model,
    put_route,
    put_version,
)
from tests.servers.zk import wait_for


def infer(client: triton_grpc.InferenceServerClient, version: str = "") -> float:
    x = triton_grpc.InferInput("INPUT0", [2], "FP32")
    x.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    result = client.infer(ADD_ONE, [x], model_version=version, client_timeout=20)
    out = result.as_numpy("OUTPUT0")
    return float(out[0] - 1.0)  # the version's increment


@pytest.fixture
def two_instances(registry, triton_a, triton_b, gateway):
    put_model(registry, ADD_ONE)
    put_version(registry, ADD_ONE, 1)
    put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)
    put_route(registry, ADD_ONE, 1, "worker-b", triton_b.address)
    wait_for(lambda: gateway.instances(ADD_ONE) == 2, what="two routes in the gateway")
    return gateway


def test_calls_spread_evenly_over_two_instances(two_instances, triton_a, triton_b):
    before = (inference_count(triton_a.address, ADD_ONE, "1"),
              inference_count(triton_b.address, ADD_ONE, "1"))  # fmt: skip
    client = triton_grpc.InferenceServerClient(two_instances.address)
    for _ in range(40):
        assert infer(client) == 1.0
    client.close()
    a = inference_count(triton_a.address, ADD_ONE, "1") - before[0]
    b = inference_count(triton_b.address, ADD_ONE, "1") - before[1]
    assert (a, b) == (20, 20)
    assert (
        two_instances.metric(
            "modelgate_gateway_requests_total",
            {"model": ADD_ONE, "version": "1", "surface": "kserve", "code": "OK"},
        )
        == 40
    )


def test_route_removed_then_added_without_restart(registry, two_instances, triton_a, triton_b):
    client = triton_grpc.InferenceServerClient(two_instances.address)
    registry.delete(layout.route(ADD_ONE, 1, "worker-b"))
    wait_for(lambda: two_instances.instances(ADD_ONE) == 1, what="route b gone")
    before_b = inference_count(triton_b.address, ADD_ONE, "1")
    for _ in range(10):
        infer(client)
    assert inference_count(triton_b.address, ADD_ONE, "1") == before_b

    registry.delete(layout.route(ADD_ONE, 1, "worker-a"))
    put_route(registry, ADD_ONE, 1, "worker-b", triton_b.address)
    wait_for(
        lambda: (
            [
                i.worker_id
                for i in two_instances.app.router.table.models[ADD_ONE].versions[1].instances
            ]
            == ["worker-b"]
        ),
        what="only route b",
    )
    before_a = inference_count(triton_a.address, ADD_ONE, "1")
    for _ in range(10):
        infer(client)
    assert inference_count(triton_b.address, ADD_ONE, "1") == before_b + 10
    assert inference_count(triton_a.address, ADD_ONE, "1") == before_a
    client.close()


def test_sticky_policy_keeps_a_user_on_one_instance(registry, two_instances, triton_a, triton_b):
    """With the header a key sticks; without it calls go round-robin and are counted."""
    put_model(registry, ADD_ONE, policy="sticky", sticky_header="x-user")
    wait_for(
        lambda: two_instances.app.router.table.models[ADD_ONE].record.policy == "sticky",
        what="the sticky policy",
    )
    client = triton_grpc.InferenceServerClient(two_instances.address)
    x = triton_grpc.InferInput("INPUT0", [1], "FP32")
    x.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    without_key = {"model": ADD_ONE}

    def spread(headers: dict[str, str]) -> list[int]:
        """Calls per instance of 6 calls with ``headers``."""
        before = (inference_count(triton_a.address, ADD_ONE, "1"),
                  inference_count(triton_b.address, ADD_ONE, "1"))  # fmt: skip
        for _ in range(6):
            client.infer(ADD_ONE, [x], model_version="1", headers=headers)
        delta = (inference_count(triton_a.address, ADD_ONE, "1") - before[0],
                 inference_count(triton_b.address, ADD_ONE, "1") - before[1])  # fmt: skip
        return sorted(delta)

    for user in ("alice", "bob", "carol"):
        assert spread({"x-user": user}) == [0, 6], user
    metric = "modelgate_gateway_sticky_without_key_total"
    assert two_instances.metric(metric, without_key) == 0
    assert spread({}) == [3, 3]
    assert two_instances.metric(metric, without_key) == 6
    assert spread({"x-user": "alice"}) == [0, 6]
    assert two_instances.metric(metric, without_key) == 6
    client.close()
