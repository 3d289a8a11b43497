"""The agent in front of the TF-Serving test double (real TF-Serving protos, as a subprocess).

Also the SIGTERM drain of ``python -m worker_agent`` run as a real process.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from deploy.local.runner import Process
from deploy.local.zookeeper import LocalZooKeeper
from protos.tfs.tensorflow.core.framework import tensor_pb2, types_pb2
from protos.tfs.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from registry import Registry, layout
from registry.records import Worker
from tests.servers.tfserving import TFServingDouble, write_double_model
from tests.servers.zk import wait_for
from tests.worker_agent.conftest import AgentFactory
from tests.worker_agent.helpers import assign, model_state, route, unassign, worker
from worker_agent.backends.tfserving import TFServingController

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


@pytest.fixture(scope="module")
def double() -> Iterator[TFServingDouble]:
    server = TFServingDouble(name="agent-double", load_delay=0.3)
    yield server
    server.stop()


def status(address: str, name: str) -> dict[int, int]:
    """{version: state} as the double reports it ({} if it knows no version)."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    with grpc.insecure_channel(address) as channel:
        try:
            response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                request, timeout=5
            )
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND, err
            return {}
    return {s.version: s.state for s in response.model_version_status}


def predict(address: str, name: str, version: int, x: float) -> float:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.version.value = version
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[x])
    tensor.tensor_shape.dim.add(size=1)
    request.inputs["x"].CopyFrom(tensor)
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=10)
    return float(response.outputs["y"].float_val[0])


def double_artifact(tmp: Path, name: str, version: int, value: float) -> str:
    """A directory artifact holding ``double.json`` (a version of a double model)."""
    return write_double_model(tmp / "src" / name, version, op="add", value=value).as_uri()


def start_tfs_agent(start_agent: AgentFactory, double: TFServingDouble, tmp: Path, **kw: object):
    return start_agent(
        backend="tfserving",
        backend_address=double.address,
        model_root=tmp / "models",
        **kw,
    )


def test_the_reload_config_holds_every_assigned_model_and_routes_follow_readiness(
    registry: Registry, start_agent: AgentFactory, double: TFServingDouble, tmp_path: Path
) -> None:
    agent = start_tfs_agent(start_agent, double, tmp_path)
    for model, version, value in (("alpha", 1, 1.0), ("alpha", 2, 2.0), ("beta", 1, 10.0)):
        uri = double_artifact(tmp_path, model, version, value)
        assign(registry, "w1", model, version, uri, backend="tfserving")
    for model, version in (("alpha", 1), ("alpha", 2), ("beta", 1)):
        found = wait_for(lambda m=model, v=version: route(registry, m, v, "w1"), what="routes")
        assert found.protocol == "tfserving" and found.address == double.address
        # a route exists only for a version the server reports AVAILABLE
        assert status(double.address, model).get(version) == AVAILABLE

    backend = agent.agent.backend
    assert isinstance(backend, TFServingController)
    config = {
        c.name: list(c.model_version_policy.specific.versions)
        for c in backend.config().model_config_list.config
    }
    assert config == {"alpha": [1, 2], "beta": [1]}
    assert status(double.address, "alpha") == {1: AVAILABLE, 2: AVAILABLE}
    assert predict(double.address, "alpha", 2, 1.0) == 3.0
    assert predict(double.address, "beta", 1, 1.0) == 11.0

    unassign(registry, "w1", "alpha", 1)
    wait_for(lambda: route(registry, "alpha", 1, "w1") is None, what="alpha@1's route to go")
    wait_for(lambda: 1 not in status(double.address, "alpha"), what="alpha@1 unloaded")
    # the whole config was sent again: the other versions are still served
    assert status(double.address, "alpha") == {2: AVAILABLE}
    assert status(double.address, "beta") == {1: AVAILABLE}
    assert route(registry, "beta", 1, "w1") is not None


def test_a_model_the_server_drops_loses_its_route_and_the_agent_restores_the_config(
    registry: Registry, start_agent: AgentFactory, double: TFServingDouble, tmp_path: Path
) -> None:
    start_tfs_agent(start_agent, double, tmp_path)
    assign(
        registry, "w1", "gamma", 1, double_artifact(tmp_path, "gamma", 1, 5.0), backend="tfserving"
    )
    wait_for(lambda: route(registry, "gamma", 1, "w1"), what="route gamma@1")

    seen: list[list[str]] = []
    registry.watch_children(layout.version_routes("gamma", 1), seen.append)
    # Someone else replaces the server's config with an empty one.
    with grpc.insecure_channel(double.address) as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(), timeout=5
        )
    wait_for(lambda: [] in seen, what="the route to be withdrawn")
    wait_for(lambda: seen[-1] == ["w1"], what="the route to come back")
    assert status(double.address, "gamma") == {1: AVAILABLE}
    assert predict(double.address, "gamma", 1, 1.0) == 6.0


def test_a_version_the_server_cannot_load_is_failed_without_a_route(
    registry: Registry, start_agent: AgentFactory, double: TFServingDouble, tmp_path: Path
) -> None:
    start_tfs_agent(start_agent, double, tmp_path)
    bad = tmp_path / "src" / "broken" / "1"
    bad.mkdir(parents=True)
    (bad / "double.json").write_text("{not json")
    assign(registry, "w1", "broken", 1, bad.as_uri(), backend="tfserving")
    wait_for(lambda: model_state(registry, "w1", "broken@1") == "FAILED", what="FAILED")
    record = worker(registry, "w1")
    assert record is not None
    assert "could not load" in (record.models["broken@1"].error or "")
    assert route(registry, "broken", 1, "w1") is None


def test_sigterm_drains_routes_first_then_unloads_and_deregisters(
    zookeeper: LocalZooKeeper,
    zk_root: str,
    registry: Registry,
    double: TFServingDouble,
    tmp_path: Path,
) -> None:
    cmd = [
        sys.executable, "-m", "worker_agent",
        "--zk", zookeeper.hosts, "--root", zk_root,
        "--worker-id", "w-drain", "--backend", "tfserving",
        "--backend-address", double.address,
        "--model-root", str(tmp_path / "models"),
        "--advertise-host", "127.0.0.1", "--status-host", "127.0.0.1", "--status-port", "0",
        "--heartbeat-interval-s", "0.3", "--drain-s", "2",
        "--labels", "zone=a,gpu=none", "--capacity-memory-mb", "512",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_WORKER_")}
    agent = Process("agent", cmd, log=tmp_path / "agent.log", env=env).start()
    try:
        assert agent.wait_ready(timeout=60)["worker_id"] == "w-drain"
        record = wait_for(lambda: worker(registry, "w-drain"), what="registration")
        assert record.labels == {"zone": "a", "gpu": "none"} and record.capacity_memory_mb == 512

        assign(
            registry,
            "w-drain",
            "delta",
            1,
            double_artifact(tmp_path, "delta", 1, 1.0),
            backend="tfserving",
        )
        wait_for(lambda: route(registry, "delta", 1, "w-drain"), what="route delta@1")

        states: list[str] = []
        route_gone = threading.Event()

        def on_worker(data: bytes | None) -> None:
            if data:
                states.append(Worker.from_bytes("worker", data).state)

        def on_routes(children: list[str]) -> None:
            if "w-drain" not in children:
                # NOTE: checked in ZooKeeper's callback, before drain-s can pass
                if status(double.address, "delta").get(1) == AVAILABLE:
                    route_gone.set()

        registry.watch_data(layout.worker("w-drain"), on_worker)
        registry.watch_children(layout.version_routes("delta", 1), on_routes)

        assert agent.popen is not None
        agent.popen.send_signal(signal.SIGTERM)
        assert agent.popen.wait(timeout=60) == 0, agent.log_tail()
        assert "draining" in states
        assert route_gone.is_set(), "the route must go while the model is still served"
        assert 1 not in status(double.address, "delta")
        assert worker(registry, "w-drain") is None
        assert route(registry, "delta", 1, "w-drain") is None
    finally:
        agent.stop()
