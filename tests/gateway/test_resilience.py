"""Failover, ejection, ZooKeeper outage, weights, and the process entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from registry import layout
from registry.records import Gateway
from tests.gateway.conftest import ADD_ONE, load_add_one, put_model, put_route, put_version
from tests.servers.gateway import GatewayProcess
from tests.servers.zk import expire_session, wait_for
from worker_agent.tritonserver import TritonServer

REPO = Path(__file__).resolve().parents[2]


def increment(client: triton_grpc.InferenceServerClient, version: str = "") -> float:
    x = triton_grpc.InferInput("INPUT0", [1], "FP32")
    x.set_data_from_numpy(np.array([0.0], dtype=np.float32))
    return float(
        client.infer(ADD_ONE, [x], model_version=version, client_timeout=20).as_numpy("OUTPUT0")[0]
    )


@pytest.fixture
def triton_c(tmp_path):
    server = TritonServer(tmp_path / "models", tmp_path)
    server.start()
    load_add_one(server)
    yield server
    server.stop()


def test_backend_killed_during_calls_zero_failures_and_ejected(
    registry, gateway, triton_a, triton_c
):
    put_model(registry, ADD_ONE)
    put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)
    put_route(registry, ADD_ONE, 1, "worker-c", triton_c.address)
    wait_for(lambda: gateway.instances(ADD_ONE) == 2, what="two routes")
    done = Counter()
    lock = threading.Lock()
    killed = threading.Event()

    def one(_: int) -> str:
        client = clients.get(threading.get_ident())
        if client is None:
            client = clients[threading.get_ident()] = triton_grpc.InferenceServerClient(
                gateway.address
            )
        try:
            increment(client, "1")
            outcome = "ok"
        except Exception as err:  # counted as a failed call
            outcome = f"failed: {err}"
        with lock:
            done[outcome] += 1
            if done["ok"] == 40 and not killed.is_set():
                killed.set()
                triton_c.kill()
        return outcome

    clients: dict[int, triton_grpc.InferenceServerClient] = {}
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(one, range(200)))
    for client in clients.values():
        client.close()
    assert killed.is_set()
    assert Counter(outcomes) == {"ok": 200}
    assert gateway.app.router.ejected(triton_c.address)
    assert gateway.metric("modelgate_gateway_ejections_total", {"address": triton_c.address}) == 1
    assert gateway.metric("modelgate_gateway_retries_total", {"model": ADD_ONE}) >= 1


def test_zookeeper_stopped_calls_keep_succeeding_then_resync(
    zookeeper, registry, gateway, triton_a, triton_b
):
    put_model(registry, ADD_ONE)
    put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)
    wait_for(lambda: gateway.instances(ADD_ONE) == 1, what="one route")
    client = triton_grpc.InferenceServerClient(gateway.address)
    zookeeper.stop()
    try:
        wait_for(
            lambda: gateway.metric("modelgate_gateway_zk_connected") == 0, what="zk_connected 0"
        )
        assert [increment(client) for _ in range(20)] == [1.0] * 20
        status, body = gateway.http_get("/healthz")
        assert status == 200 and json.loads(body)["zookeeper"] == "unreachable"
    finally:
        zookeeper.start()
    wait_for(lambda: gateway.metric("modelgate_gateway_zk_connected") == 1, what="zk_connected 1")
    wait_for(lambda: registry.connected, what="the test's own ZooKeeper client back")
    put_route(registry, ADD_ONE, 1, "worker-b", triton_b.address)
    wait_for(lambda: gateway.instances(ADD_ONE) == 2, what="the table resynced after the outage")
    assert increment(client) == 1.0
    client.close()


def test_labels_and_weights_80_20_over_1000_calls(registry, gateway, triton_a, triton_b):
    put_model(registry, ADD_ONE, traffic={"1": 80, "2": 20})
    put_version(registry, ADD_ONE, 1, ["stable"])
    put_version(registry, ADD_ONE, 2, ["canary"])
    for v in (1, 2):
        put_route(registry, ADD_ONE, v, "worker-a", triton_a.address)
        put_route(registry, ADD_ONE, v, "worker-b", triton_b.address)
    wait_for(lambda: gateway.instances(ADD_ONE) == 4, what="four routes")
    client = triton_grpc.InferenceServerClient(gateway.address)
    counts = Counter(increment(client) for _ in range(1000))
    assert abs(counts[1.0] - 800) <= 40 and abs(counts[10.0] - 200) <= 40
    assert counts[1.0] + counts[10.0] == 1000
    assert {increment(client, "canary") for _ in range(10)} == {10.0}
    assert {increment(client, "stable") for _ in range(10)} == {1.0}
    # weights apply only to versions with a ready instance: v2 loses its routes
    registry.delete(layout.route(ADD_ONE, 2, "worker-a"))
    registry.delete(layout.route(ADD_ONE, 2, "worker-b"))
    wait_for(lambda: gateway.instances(ADD_ONE) == 2, what="v2 routes gone")
    assert {increment(client) for _ in range(50)} == {1.0}
    client.close()


def test_python_m_gateway_registers_serves_and_drains_on_sigterm(
    zookeeper, zk_root, registry, tmp_path
):
    env = dict(os.environ, MODELGATE_GATEWAY_ROOT=zk_root)
    args = ["--zk", zookeeper.hosts, "--gateway-id", "gw-cli", "--grace-s", "1"]
    process = GatewayProcess(tmp_path, *args, env=env)
    try:
        process.serve()
        port = process.port("grpc")
        record = wait_for(
            lambda: registry.read(layout.gateway("gw-cli"), Gateway), what="registration"
        )
        assert record.address.endswith(f":{port}")
        with grpc.insecure_channel(process.address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        assert process.popen is not None
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(30) == 0, process.log_tail()
        wait_for(lambda: not registry.exists(layout.gateway("gw-cli")), what="deregistration")
    finally:
        process.stop()


def test_session_expiry_re_registers_and_resyncs(registry, gateway, triton_a, triton_b):
    put_model(registry, ADD_ONE)
    put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)
    wait_for(lambda: gateway.instances(ADD_ONE) == 1, what="one route")
    expire_session(gateway.app.registry)
    wait_for(lambda: registry.exists(layout.gateway("gw-test")), what="re-registration")
    client = triton_grpc.InferenceServerClient(gateway.address)
    assert increment(client) == 1.0
    put_route(registry, ADD_ONE, 1, "worker-b", triton_b.address)
    wait_for(lambda: gateway.instances(ADD_ONE) == 2, what="changes seen after the new session")
    client.close()


def test_python_m_gateway_exits_with_a_clear_error_without_zookeeper():
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--zk", "127.0.0.1:1", "--zk-connect-timeout-s", "1",
         "--port", "0", "--metrics-port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert "could not connect to ZooKeeper at 127.0.0.1:1" in out.stderr
