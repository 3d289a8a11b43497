"""The HAProxy data plane with real HAProxy, ZooKeeper, Triton and the TF-Serving double:
live programming, failover, restarts, duplicate routing fields, large messages, error texts
and metrics of fast-path calls."""

from __future__ import annotations

import os
import re
import signal
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2 as kserve
from tritonclient.utils import InferenceServerException

from examples.models import write_add_one
from gateway.backends.wire import length_delimited
from gateway.dataplane.config import PYTHON_BACKEND
from protos.tfs.tensorflow_serving.apis import predict_pb2
from registry import layout
from tests.gateway.conftest import (
    ADD_ONE,
    DOUBLE_MODEL,
    RunningGateway,
    inference_count,
    load_add_one,
    put_model,
    put_route,
    put_version,
    raw_status,
)
from tests.servers.zk import wait_for
from worker_agent.tritonserver import TritonServer

HAPROXY_ONLY = pytest.mark.parametrize("dataplane", ["haproxy"])
KSERVE_INFER = "/inference.GRPCInferenceService/ModelInfer"
TFS_PREDICT = "/tensorflow.serving.PredictionService/Predict"


def sessions(gw: RunningGateway) -> dict[str, int]:
    """Calls HAProxy sent to each backend (slot backends and the Python gateway)."""
    assert gw.app.dataplane is not None
    (stats,) = gw.run(gw.app.dataplane.api.execute(["show stat -1 2 -1"]))
    header, *rows = stats.splitlines()
    column = header.lstrip("# ").split(",").index("stot")
    return {row.split(",")[0]: int(row.split(",")[column]) for row in rows}


def fast_path_calls(gw: RunningGateway) -> int:
    return sum(n for backend, n in sessions(gw).items() if backend != PYTHON_BACKEND)


def programmed(gw: RunningGateway) -> None:
    """Wait until HAProxy has the gateway's current routing table."""
    assert gw.app.dataplane is not None
    gw.run(gw.app.dataplane.applied.wait())


def serve_add_one(registry, gw: RunningGateway, triton: TritonServer) -> None:
    """add_one version 1 on ``triton``, routed by the gateway and programmed into HAProxy."""
    put_model(registry, ADD_ONE)
    put_version(registry, ADD_ONE, 1)
    put_route(registry, ADD_ONE, 1, "worker-a", triton.address)
    wait_for(lambda: gw.instances(ADD_ONE) == 1, what="route a")
    programmed(gw)


def infer(client: triton_grpc.InferenceServerClient, model: str = ADD_ONE, n: int = 1) -> float:
    x = triton_grpc.InferInput("INPUT0", [n], "FP32")
    x.set_data_from_numpy(np.zeros(n, dtype=np.float32))
    result = client.infer(model, [x], model_version="1", client_timeout=20)
    return float(result.as_numpy("OUTPUT0")[0])


@pytest.fixture
def spare_triton(tmp_path):
    server = TritonServer(tmp_path / "models", tmp_path)
    server.start()
    load_add_one(server)
    yield server
    server.stop()


@HAPROXY_ONLY
def test_route_added_and_removed_reaches_haproxy_and_traffic_follows(
    registry, gateway, triton_a, triton_b
):
    serve_add_one(registry, gateway, triton_a)
    pid = gateway.app.dataplane.supervisor.pid
    client = triton_grpc.InferenceServerClient(gateway.address)
    to_python = sessions(gateway)[PYTHON_BACKEND]
    before = (inference_count(triton_a.address, ADD_ONE, "1"),
              inference_count(triton_b.address, ADD_ONE, "1"))  # fmt: skip
    for _ in range(10):
        assert infer(client) == 1.0
    assert fast_path_calls(gateway) == 10

    put_route(registry, ADD_ONE, 1, "worker-b", triton_b.address)
    wait_for(lambda: gateway.instances(ADD_ONE) == 2, what="route b")
    programmed(gateway)
    for _ in range(20):
        assert infer(client) == 1.0
    a = inference_count(triton_a.address, ADD_ONE, "1") - before[0]
    b = inference_count(triton_b.address, ADD_ONE, "1") - before[1]
    assert (a, b) == (20, 10)

    registry.delete(layout.route(ADD_ONE, 1, "worker-a"))
    wait_for(lambda: gateway.instances(ADD_ONE) == 1, what="route a gone")
    programmed(gateway)
    for _ in range(10):
        assert infer(client) == 1.0
    assert inference_count(triton_a.address, ADD_ONE, "1") - before[0] == 20
    assert inference_count(triton_b.address, ADD_ONE, "1") - before[1] == 20
    assert fast_path_calls(gateway) == 40
    assert sessions(gateway)[PYTHON_BACKEND] == to_python
    assert gateway.app.dataplane.supervisor.pid == pid  # no restart, no reload
    client.close()


def test_backend_sigkilled_under_load_fails_no_call_the_data_plane_can_retry(
    registry, gateway, triton_a, spare_triton
):
    put_model(registry, ADD_ONE)
    put_version(registry, ADD_ONE, 1)
    put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)
    put_route(registry, ADD_ONE, 1, "worker-c", spare_triton.address)
    wait_for(lambda: gateway.instances(ADD_ONE) == 2, what="two routes")
    if gateway.app.dataplane is not None:
        programmed(gateway)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    killed = threading.Event()
    clients: dict[int, triton_grpc.InferenceServerClient] = {}

    def one(_: int) -> None:
        client = clients.get(threading.get_ident())
        if client is None:
            client = clients[threading.get_ident()] = triton_grpc.InferenceServerClient(
                gateway.address
            )
        try:
            infer(client)
            outcome = "ok"
        except InferenceServerException as err:
            outcome = f"failed: {err}"
        with lock:
            outcomes[outcome] += 1
            if outcomes["ok"] == 100 and not killed.is_set():
                killed.set()
                spare_triton.kill()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(600)))
    for client in clients.values():
        client.close()
    assert killed.is_set()
    failed = {outcome: n for outcome, n in outcomes.items() if outcome != "ok"}
    if gateway.app.dataplane is None:
        assert outcomes == {"ok": 600}
        return
    # NOTE: HAProxy retries a call whose connection failed or that got no answer, but not one
    # whose answer had begun when the backend died: the caller sees the stream end without
    # trailers ("Stream removed"). Seen in about 1 of 600 calls here; the Python path retries
    # those too. A known limit of the fast path (docs/gateway.md), asserted as exactly that:
    # no other failure, and never more than the calls that were in flight (8).
    assert all("Stream removed" in outcome for outcome in failed), failed
    assert sum(failed.values()) <= 8, failed
    assert outcomes["ok"] + sum(failed.values()) == 600


@HAPROXY_ONLY
def test_models_created_while_calls_run_zero_failed_calls(registry, gateway, triton_a):
    names = [f"dp_new_{i}" for i in range(3)]
    admin = triton_grpc.InferenceServerClient(triton_a.address)
    for i, name in enumerate(names):
        write_add_one(triton_a.model_repository, name, 1, float(i + 2))
        admin.load_model(name)
    admin.close()
    serve_add_one(registry, gateway, triton_a)
    pid = gateway.app.dataplane.supervisor.pid
    stop = threading.Event()
    outcomes: Counter[str] = Counter()

    def calls() -> None:
        client = triton_grpc.InferenceServerClient(gateway.address)
        while not stop.is_set():
            try:
                outcomes["ok" if infer(client) == 1.0 else "wrong answer"] += 1
            except InferenceServerException as err:
                outcomes[f"failed: {err}"] += 1
        client.close()

    threads = [threading.Thread(target=calls) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        client = triton_grpc.InferenceServerClient(gateway.address)
        for i, name in enumerate(names):
            put_model(registry, name)
            put_version(registry, name, 1)
            put_route(registry, name, 1, "worker-a", triton_a.address)
            wait_for(lambda name=name: gateway.instances(name) == 1, what=f"route of {name}")
            programmed(gateway)
            served = fast_path_calls(gateway)
            assert infer(client, name) == float(i + 2)
            assert fast_path_calls(gateway) > served
        client.close()
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert set(outcomes) == {"ok"} and outcomes["ok"] > 0
    assert gateway.app.dataplane.supervisor.pid == pid
    assert gateway.metric("modelgate_gateway_dataplane_restarts_total") == 0


@HAPROXY_ONLY
def test_haproxy_killed_is_restarted_and_serving_resumes(registry, gateway, triton_a):
    serve_add_one(registry, gateway, triton_a)
    client = triton_grpc.InferenceServerClient(gateway.address)
    assert infer(client) == 1.0
    supervisor = gateway.app.dataplane.supervisor
    first = supervisor.pid
    os.kill(first, signal.SIGKILL)
    wait_for(
        lambda: (
            gateway.metric("modelgate_gateway_dataplane_restarts_total") == 1
            and supervisor.pid != first
        ),
        what="haproxy restarted",
    )
    programmed(gateway)
    assert infer(client) == 1.0
    assert fast_path_calls(gateway) == 1  # the new HAProxy serves it on the fast path
    client.close()


def raw_call(address: str, method: str, body: bytes) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary(method)(body, timeout=20)
        except grpc.RpcError as err:
            return err.code(), err.details()
    return grpc.StatusCode.OK, ""


def test_duplicate_routing_fields_never_run_the_other_model(
    registry, gateway, triton_a, tfs_double
):
    put_model(registry, ADD_ONE)
    put_version(registry, ADD_ONE, 1)
    put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)
    put_model(registry, DOUBLE_MODEL, backend="tfserving")
    put_version(registry, DOUBLE_MODEL, 1)
    put_route(registry, DOUBLE_MODEL, 1, "worker-d", tfs_double.address, "tfserving")
    wait_for(
        lambda: gateway.instances(ADD_ONE) == 1 and gateway.instances(DOUBLE_MODEL) == 1,
        what="routes",
    )
    if gateway.app.dataplane is not None:
        programmed(gateway)
    request = kserve.ModelInferRequest(model_name=ADD_ONE, model_version="1")
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    body = request.SerializeToString()
    before = inference_count(triton_a.address, ADD_ONE, "1")
    # protobuf keeps the last value of a repeated field: this call names "ghost", version 1
    code, message = raw_call(
        gateway.address,
        KSERVE_INFER,
        body + kserve.ModelInferRequest(model_name="ghost").SerializeToString(),
    )
    assert code == grpc.StatusCode.NOT_FOUND and "'ghost' is not known to the gateway" in message
    code, message = raw_call(
        gateway.address,
        KSERVE_INFER,
        body + kserve.ModelInferRequest(model_version="7").SerializeToString(),
    )
    assert code == grpc.StatusCode.NOT_FOUND and f"{ADD_ONE!r} has no version 7" in message
    assert inference_count(triton_a.address, ADD_ONE, "1") == before

    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = DOUBLE_MODEL
    predict.model_spec.version.value = 1
    again = predict_pb2.PredictRequest()
    again.model_spec.name = "ghost"  # model_spec appears twice: protobuf merges the two
    code, message = raw_call(
        gateway.address, TFS_PREDICT, predict.SerializeToString() + again.SerializeToString()
    )
    assert code == grpc.StatusCode.NOT_FOUND and "'ghost' is not known to the gateway" in message


@HAPROXY_ONLY
@pytest.mark.parametrize("megabytes", [10, 64])
def test_large_tensors_are_routed_and_answered(registry, gateway, triton_a, megabytes):
    serve_add_one(registry, gateway, triton_a)
    n = megabytes * 1_000_000 // 4
    limit = [
        ("grpc.max_receive_message_length", 1 << 27),
        ("grpc.max_send_message_length", 1 << 27),
    ]
    client = triton_grpc.InferenceServerClient(gateway.address, channel_args=limit)
    x = triton_grpc.InferInput("INPUT0", [n], "FP32")
    x.set_data_from_numpy(np.arange(n, dtype=np.float32))
    out = client.infer(ADD_ONE, [x], model_version="1", client_timeout=120).as_numpy("OUTPUT0")
    assert out.shape == (n,) and out[0] == 1.0 and out[-1] == float(n)
    client.close()


def error_texts(gw: RunningGateway) -> list[tuple[str, str]]:
    client = triton_grpc.InferenceServerClient(gw.address)
    x = triton_grpc.InferInput("INPUT0", [1], "FP32")
    x.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    texts = []
    for model, version in (("nope", "1"), ("nope", ""), ("empty", "1"), ("empty", ""),
                           ("resting", "1")):  # fmt: skip
        with pytest.raises(InferenceServerException) as err:
            client.infer(model, [x], model_version=version, client_timeout=20)
        texts.append((err.value.status(), err.value.message()))
    client.close()
    return texts


@HAPROXY_ONLY
def test_not_found_and_unavailable_texts_identical_in_both_modes(
    registry, gateway, gateway_settings, triton_a
):
    put_model(registry, "empty")
    put_version(registry, "empty", 1)
    put_model(registry, "resting", state="offline")
    put_version(registry, "resting", 1)
    put_route(registry, "resting", 1, "worker-a", triton_a.address)
    wait_for(lambda: "resting" in gateway.app.router.table.models, what="models")
    programmed(gateway)
    python = RunningGateway(gateway_settings.model_copy(update={"dataplane": "python"}))
    try:
        wait_for(lambda: "resting" in python.app.router.table.models, what="models")
        assert error_texts(gateway) == error_texts(python)
    finally:
        python.stop()
    assert [code for code, _ in error_texts(gateway)] == [
        "StatusCode.NOT_FOUND", "StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE",
        "StatusCode.UNAVAILABLE", "StatusCode.UNAVAILABLE",
    ]  # fmt: skip


@HAPROXY_ONLY
def test_fast_path_calls_are_in_the_gateway_metrics_by_model(registry, gateway, triton_a):
    serve_add_one(registry, gateway, triton_a)
    client = triton_grpc.InferenceServerClient(gateway.address)
    for _ in range(12):
        infer(client)
    bad = triton_grpc.InferInput("WRONG", [1], "FP32")
    bad.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer(ADD_ONE, [bad], model_version="1")
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    client.close()
    assert fast_path_calls(gateway) == 13
    labels = {"model": ADD_ONE, "version": "1", "surface": "kserve"}
    assert gateway.metric("modelgate_gateway_requests_total", {**labels, "code": "OK"}) == 12
    fast = {"model": ADD_ONE, "code": "OK"}
    assert gateway.metric("modelgate_gateway_fastpath_requests_total", fast) == 12
    assert (
        gateway.metric("modelgate_gateway_requests_total", {**labels, "code": "INVALID_ARGUMENT"})
        == 1
    )
    assert (
        gateway.metric(
            "modelgate_gateway_latency_seconds_count",
            {"stage": "total", "model": ADD_ONE, "surface": "kserve"},
        )
        == 13
    )


@HAPROXY_ONLY
def test_bytes_the_backend_cannot_parse_are_invalid_argument_on_the_fast_path(
    registry, gateway, triton_a
):
    serve_add_one(registry, gateway, triton_a)
    valid = kserve.ModelInferRequest(model_name=ADD_ONE, model_version="1").SerializeToString()
    broken = valid + length_delimited(5, b"\xff\xff\xff")  # an `inputs` entry that is garbage
    before = fast_path_calls(gateway)
    code, message = raw_status(gateway.address, KSERVE_INFER, broken)
    assert fast_path_calls(gateway) == before + 1  # HAProxy sent it to Triton itself
    assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    assert message.startswith("ModelInferRequest does not parse as protobuf"), message
    assert "Unable to parse request" in message  # and says what the backend said
    labels = {"model": ADD_ONE, "version": "1", "surface": "kserve"}
    assert (
        gateway.metric("modelgate_gateway_requests_total", {**labels, "code": "INVALID_ARGUMENT"})
        == 1
    )


def python_path_address(gw: RunningGateway) -> str:
    """The Python gateway's own port behind HAProxy (the python backend's server)."""
    assert gw.app.dataplane is not None
    config = gw.app.dataplane.layout.config.read_text()
    (port,) = re.findall(rf"^backend {PYTHON_BACKEND}\n(?:.*\n)*?\s+server gateway 127\.0\.0\.1:(\d+)",
                         config, re.MULTILINE)  # fmt: skip
    return f"127.0.0.1:{port}"


def serve_on_both(registry, gw: RunningGateway, a: TritonServer, b: TritonServer, **fields):
    put_model(registry, ADD_ONE, **fields)
    put_version(registry, ADD_ONE, 1)
    put_route(registry, ADD_ONE, 1, "worker-a", a.address)
    put_route(registry, ADD_ONE, 1, "worker-b", b.address)
    wait_for(
        lambda: (
            gw.instances(ADD_ONE) == 2
            and gw.app.router.table.models[ADD_ONE].record.policy == fields.get("policy")
        ),
        what="two routes and the policy in the gateway",
    )
    programmed(gw)


def served_by(client, a: TritonServer, b: TritonServer, calls: int, **headers: str) -> tuple:
    """How many of ``calls`` calls each of ``a`` and ``b`` served."""
    before = (inference_count(a.address, ADD_ONE, "1"), inference_count(b.address, ADD_ONE, "1"))
    x = triton_grpc.InferInput("INPUT0", [1], "FP32")
    x.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    for _ in range(calls):
        client.infer(ADD_ONE, [x], model_version="1", headers=headers, client_timeout=20)

    def served() -> tuple[int, int]:
        return (inference_count(a.address, ADD_ONE, "1") - before[0],
                inference_count(b.address, ADD_ONE, "1") - before[1])  # fmt: skip

    # NOTE: Triton counts an inference in its statistics just after it answers
    wait_for(lambda: sum(served()) >= calls, timeout=10, what=f"{calls} inferences counted")
    return served()


@HAPROXY_ONLY
def test_sticky_keys_take_the_fast_path_to_the_instance_the_python_path_picks(
    registry, gateway, triton_a, triton_b
):
    serve_on_both(registry, gateway, triton_a, triton_b, policy="sticky", sticky_header="x-user")
    fast = triton_grpc.InferenceServerClient(gateway.address)
    python = triton_grpc.InferenceServerClient(python_path_address(gateway))
    to_python = sessions(gateway)[PYTHON_BACKEND]
    chosen = set()
    for n in range(16):
        user = f"user-{n}"
        on_fast = served_by(fast, triton_a, triton_b, 3, **{"x-user": user})
        assert sorted(on_fast) == [0, 3], user  # a key stays on one instance
        assert served_by(python, triton_a, triton_b, 1, **{"x-user": user}) == tuple(
            c // 3 for c in on_fast
        ), user  # and it is the Python router's choice (the same rendezvous hash)
        chosen.add(on_fast)
    assert chosen == {(3, 0), (0, 3)}  # keys spread over both instances
    assert fast_path_calls(gateway) == 16 * 3
    assert sessions(gateway)[PYTHON_BACKEND] == to_python
    # without the header: the Python path (round-robin, counted there)
    assert served_by(fast, triton_a, triton_b, 4) == (2, 2)
    assert sessions(gateway)[PYTHON_BACKEND] == to_python + 4
    fast.close()
    python.close()


@HAPROXY_ONLY
def test_least_request_models_take_the_fast_path_over_every_instance(
    registry, gateway, triton_a, triton_b
):
    serve_on_both(registry, gateway, triton_a, triton_b, policy="least_request")
    client = triton_grpc.InferenceServerClient(gateway.address)
    calls = fast_path_calls(gateway)
    # NOTE: one call at a time: every instance has none in flight, and the turn breaks ties
    assert served_by(client, triton_a, triton_b, 20) == (10, 10)
    assert fast_path_calls(gateway) == calls + 20
    client.close()


@HAPROXY_ONLY
def test_models_sharing_an_instance_share_its_backend_however_many_they_are(
    registry, gateway, triton_a
):
    serve_add_one(registry, gateway, triton_a)
    names = [f"shared-{n:03d}" for n in range(150)]
    for name in names:
        put_model(registry, name)
        put_version(registry, name, 1)
        put_route(registry, name, 1, "worker-a", triton_a.address)
    wait_for(lambda: all(gateway.instances(n) == 1 for n in names), what="150 more models")
    programmed(gateway)
    api = gateway.app.dataplane.api
    route_map = gateway.app.dataplane.layout.route_map
    (entries,) = gateway.run(api.execute([f"show map {route_map}"]))
    assert len(entries.splitlines()) == 151  # every model on the fast path, not a few slots'
    (servers,) = gateway.run(api.execute(["show servers state"]))
    # NOTE: columns: be_id be_name srv_id srv_name srv_addr srv_op_state (2: up) ...
    ready = {row.split()[1] for row in servers.splitlines()[2:]
             if row.split()[3] == "s" and row.split()[5] == "2"}  # fmt: skip
    assert len(ready) == 1  # one instance backend for the one Triton
    client = triton_grpc.InferenceServerClient(gateway.address)
    calls = fast_path_calls(gateway)
    assert infer(client) == 1.0
    assert fast_path_calls(gateway) == calls + 1
    client.close()


@HAPROXY_ONLY
def test_versions_beyond_the_declared_instance_backends_take_the_python_path(
    registry, gateway_settings, triton_a, triton_b
):
    gw = RunningGateway(gateway_settings.model_copy(update={"haproxy_instances": 1}))
    try:
        assert gw.app.dataplane is not None
        assert gw.app.dataplane.layout.config.read_text().count("\nbackend i_") == 1
        serve_on_both(registry, gw, triton_a, triton_b, policy="round_robin")
        client = triton_grpc.InferenceServerClient(gw.address)
        # NOTE: one backend for two instances: the version is balanced by the Python path
        assert served_by(client, triton_a, triton_b, 10) == (5, 5)
        assert fast_path_calls(gw) == 0
        client.close()
    finally:
        gw.stop()
