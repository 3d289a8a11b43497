"""Gateway test fixtures: an in-process gateway (own thread and event loop), a second real
Triton, and helpers to write routes into ZooKeeper (the TF-Serving double serving
``DOUBLE_MODEL`` is the shared ``tfs_double`` of tests/conftest.py)."""

from __future__ import annotations

import asyncio
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest
import tritonclient.grpc as triton_grpc
from prometheus_client import CollectorRegistry

from examples.models import write_add_one
from gateway.app import GatewayApp
from gateway.settings import GatewaySettings
from registry import Registry, layout
from registry.records import Model, ModelVersion, Route
from tests.servers.tfserving import DOUBLE_MODEL as DOUBLE_MODEL
from tests.servers.zk import wait_for
from worker_agent.tritonserver import TritonServer

ADD_ONE = "add_one_gw"


def write_versions(repo: Path, name: str, increments: dict[int, float]) -> None:
    """An add_one model with several versions, all served (version_policy all)."""
    for version, inc in increments.items():
        model_dir = write_add_one(repo, name, version, inc)
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy: { all { } }\n")


def load_add_one(server: TritonServer) -> None:
    write_versions(server.model_repository, ADD_ONE, {1: 1.0, 2: 10.0})
    client = triton_grpc.InferenceServerClient(server.address)
    client.load_model(ADD_ONE)
    assert client.is_model_ready(ADD_ONE, "1") and client.is_model_ready(ADD_ONE, "2")
    client.close()


@pytest.fixture(scope="session")
def triton_a(triton: TritonServer) -> TritonServer:
    load_add_one(triton)
    return triton


@pytest.fixture(scope="session")
def triton_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    workdir = tmp_path_factory.mktemp("triton_b")
    server = TritonServer(workdir / "models", workdir)
    server.start()
    load_add_one(server)
    yield server
    server.stop()


class RunningGateway:
    """A GatewayApp on its own event loop in a background thread."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.metrics_registry = CollectorRegistry()
        self.app = GatewayApp(settings, self.metrics_registry)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self.app.start(), timeout=60)
        self.address = f"127.0.0.1:{self.app.port}"

    def run(self, coro: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        if self.app.dataplane is not None:
            self.run(self.app.dataplane.settle())  # fast-path calls are counted from its log
        value = self.app.exposed.get_sample_value(name, labels or {})  # its workers too
        return 0.0 if value is None else value

    def instances(self, model: str) -> int:
        entry = self.app.router.table.models.get(model)
        return 0 if entry is None else entry.ready_instances

    def http_get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.app.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def stop(self) -> None:
        self.run(self.app.stop(), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def require_haproxy() -> None:
    if shutil.which("haproxy") is None:
        pytest.fail(
            "haproxy is missing: install it with `make setup` or "
            "`sudo apt-get install -y haproxy` (the gateway tests run in both data planes)"
        )


@pytest.fixture(params=["haproxy", "python"])
def dataplane(request: pytest.FixtureRequest) -> str:
    """Every gateway test runs with HAProxy in front and with the Python gateway alone."""
    if request.param == "haproxy":
        require_haproxy()
    return str(request.param)


@pytest.fixture
def gateway_settings(zookeeper: Any, zk_root: str, dataplane: str) -> GatewaySettings:
    return GatewaySettings(
        dataplane=dataplane,  # type: ignore[arg-type]
        zk=zookeeper.hosts,
        root=zk_root,
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        gateway_id="gw-test",
        eject_s=60,
        default_timeout_s=20,
        grace_s=2,
        # NOTE: these tests wait for this process's table (instances(), app.router) before a
        # call; a worker sees a change a moment later (its own watch). Workers are tested as
        # users run them, with python -m gateway, in test_workers.py.
        python_workers=1,
    )


@pytest.fixture
def gateway(gateway_settings: GatewaySettings, registry: Registry) -> Iterator[RunningGateway]:
    running = RunningGateway(gateway_settings)
    yield running
    running.stop()


def put_model(registry: Registry, name: str, backend: str = "triton", **fields: Any) -> None:
    registry.put(layout.model(name), Model(name=name, backend=backend, **fields))  # type: ignore[arg-type]


def put_version(registry: Registry, name: str, version: int, labels: list[str] = ()) -> None:  # type: ignore[assignment]
    registry.put(
        layout.version(name, version),
        ModelVersion(
            version=version, artifact_uri=f"file:///models/{name}/{version}", labels=list(labels)
        ),
    )


def put_route(
    registry: Registry, name: str, version: int, worker: str, address: str, protocol: str = "kserve"
) -> None:
    registry.put(
        layout.route(name, version, worker),
        Route(model=name, version=version, worker_id=worker, address=address, protocol=protocol),  # type: ignore[arg-type]
    )


def inference_count(address: str, model: str, version: str = "") -> int:
    """Successful inferences of ``model`` on one Triton instance (from its statistics)."""
    client = triton_grpc.InferenceServerClient(address)
    try:
        stats = client.get_inference_statistics(model, version, as_json=True)
        return sum(
            int(s["inference_stats"]["success"].get("count", 0)) for s in stats["model_stats"]
        )
    finally:
        client.close()


@pytest.fixture
def routed(
    registry: Registry, triton_a: TritonServer, tfs_double: Any, gateway: RunningGateway
) -> RunningGateway:
    """add_one (Triton, versions 1 stable / 2 canary) and dbl (TF-Serving double)."""
    put_model(registry, ADD_ONE)
    put_version(registry, ADD_ONE, 1, ["stable"])
    put_version(registry, ADD_ONE, 2, ["canary"])
    put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)
    put_route(registry, ADD_ONE, 2, "worker-a", triton_a.address)
    put_model(registry, DOUBLE_MODEL, backend="tfserving")
    put_version(registry, DOUBLE_MODEL, 1)
    put_route(registry, DOUBLE_MODEL, 1, "worker-d", tfs_double.address, "tfserving")
    put_model(registry, "empty")
    put_version(registry, "empty", 1)
    wait_for(
        lambda: gateway.instances(ADD_ONE) == 2 and gateway.instances(DOUBLE_MODEL) == 1,
        what="routes in the gateway",
    )
    return gateway


def raw_status(address: str, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    """Send ``payload`` as the request bytes of ``method``; the status and details back."""
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary(method)(payload, timeout=20)
        except grpc.RpcError as err:
            return err.code(), err.details()
    return grpc.StatusCode.OK, ""
