"""Python gateway workers behind HAProxy (``--python-workers``), as users run them: one
``python -m gateway`` command with real HAProxy, ZooKeeper, Triton and the TF-Serving stub.
The Python path here is TF-Serving Predict to a Triton model (the gateway translates)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from deploy.local.runner import ProcessFailed
from gateway import workers
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from protos.tfs.tensorflow.core.framework import tensor_pb2, types_pb2
from protos.tfs.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from registry import Registry, layout
from registry.records import Gateway
from tests.gateway.conftest import ADD_ONE, put_model, put_route, put_version, require_haproxy
from tests.gateway.test_plugins import CSV_PLUGIN, invoke, publish
from tests.servers.gateway import GatewayProcess
from tests.servers.zk import wait_for

GATEWAY_ID = "gw-workers"
REQUESTS = "modelgate_gateway_requests_total"


class Gateway2:
    """``python -m gateway --python-workers 2`` and what a test reads of it."""

    def __init__(self, tmp_path: Path, zookeeper, zk_root: str, *args: str) -> None:
        require_haproxy()
        self.haproxy_dir = tmp_path / "haproxy"
        self.process = GatewayProcess(
            tmp_path, "--zk", zookeeper.hosts, "--root", zk_root, "--gateway-id", GATEWAY_ID,
            "--dataplane", "haproxy", "--haproxy-dir", str(self.haproxy_dir), "--grace-s", "5",
            "--python-workers", "2", *args,
        )  # fmt: skip

    def serve(self) -> Gateway2:
        self.process.serve()
        return self

    @property
    def address(self) -> str:
        return self.process.address

    def workers(self) -> list[psutil.Process]:
        """The worker processes (children of the gateway running ``gateway.python_worker``)."""
        children = psutil.Process(self.process.pid).children()
        return [c for c in children if "gateway.python_worker" in c.cmdline()]

    def http(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.process.port('metrics')}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def healthz(self) -> dict:
        return json.loads(self.http("/healthz")[1])

    def metric(self, name: str, **labels: str) -> float:
        """A sample of /metrics (0 when absent)."""
        for family in text_string_to_metric_families(self.http("/metrics")[1]):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return sample.value
        return 0.0

    def python_sessions(self) -> dict[str, tuple[int, str]]:
        """Calls HAProxy sent to each server of its python backend, and their status."""
        with socket.socket(socket.AF_UNIX) as admin:
            admin.connect(str(self.haproxy_dir / "admin.sock"))
            admin.sendall(b"show stat python 4 -1\n")
            text = b"".join(iter(lambda: admin.recv(65536), b"")).decode()
        header, *rows = [line for line in text.splitlines() if line]
        columns = header.lstrip("# ").split(",")
        stot, status = columns.index("stot"), columns.index("status")
        return {(f := row.split(","))[1]: (int(f[stot]), f[status]) for row in rows}


@pytest.fixture
def add_one_routed(registry: Registry, triton_a) -> None:
    put_model(registry, ADD_ONE)
    put_version(registry, ADD_ONE, 1)
    put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)


@pytest.fixture
def gw(tmp_path, zookeeper, zk_root, add_one_routed):
    gateway = Gateway2(tmp_path, zookeeper, zk_root).serve()
    yield gateway
    gateway.process.stop()


def predict(address: str) -> float:
    """TF-Serving Predict of add_one (a Triton model: the Python path translates it)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = ADD_ONE
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0])
    tensor.tensor_shape.dim.add(size=2)
    request.inputs["INPUT0"].CopyFrom(tensor)
    with grpc.insecure_channel(address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=20
        )
    return float(np.frombuffer(response.outputs["OUTPUT0"].tensor_content, np.float32)[0])


def test_calls_are_balanced_over_every_worker_and_counted_once_on_one_port(gw):
    health = gw.healthz()
    assert health["ok"] is True and health["python_workers"] == 2
    assert len(gw.workers()) == 1  # this process and one worker
    for _ in range(40):
        assert predict(gw.address) == 2.0

    sessions = gw.python_sessions()
    assert set(sessions) == {"gateway", "python_1"}
    assert all(calls > 0 for calls, _ in sessions.values()), sessions
    assert sum(calls for calls, _ in sessions.values()) == 40
    ok = {"model": ADD_ONE, "surface": "tfserving", "code": "OK"}
    assert gw.metric(REQUESTS, **ok) == 40
    assert gw.metric("modelgate_gateway_in_flight", surface="tfserving") == 0


def test_a_killed_worker_is_restarted_counted_and_out_of_rotation_meanwhile(gw):
    ok = {"model": ADD_ONE, "surface": "tfserving", "code": "OK"}
    for _ in range(20):
        assert predict(gw.address) == 2.0
    assert gw.metric(REQUESTS, **ok) == 20
    (worker,) = gw.workers()
    os.kill(worker.pid, signal.SIGKILL)

    # NOTE: every call while the worker is down or booting is answered by the others
    answered = 0
    wait_for(lambda: gw.healthz()["python_workers"] == 1, what="the worker seen down")
    while not gw.healthz()["ok"]:
        assert predict(gw.address) == 2.0
        answered += 1
    assert gw.metric("modelgate_gateway_worker_restarts_total") == 1
    (restarted,) = gw.workers()
    assert restarted.pid != worker.pid
    wait_for(lambda: gw.python_sessions()["python_1"][1] == "UP", what="the worker back in")
    # the dead worker's calls still count: no counter goes back
    assert gw.metric(REQUESTS, **ok) == 20 + answered
    before = gw.python_sessions()["python_1"][0]
    for _ in range(20):
        assert predict(gw.address) == 2.0
    assert gw.python_sessions()["python_1"][0] > before
    assert gw.metric(REQUESTS, **ok) == 40 + answered


def test_sigterm_drains_and_stops_every_worker(gw):
    assert predict(gw.address) == 2.0
    workers = gw.workers()
    assert len(workers) == 1
    # python -m gateway.python_worker <directory> <index>
    directory = Path(workers[0].cmdline()[-2])
    assert directory.joinpath("python-1.sock").exists()
    gw.process.stop()
    assert gw.process.returncode == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert not directory.exists()


PID_PLUGIN = CSV_PLUGIN.replace(
    '        self.tag = config.get("tag", "")',
    '        self.tag = config.get("tag", "")\n'
    '        if os.getpid() != int(config["control_pid"]):\n'
    '            raise RuntimeError("not the control process")',
).replace("import time\n", "import os\nimport time\n")


def test_plugins_load_in_every_worker_and_one_record_reports_a_workers_error(
    tmp_path, zookeeper, zk_root, registry, triton_a
):
    good = publish(registry, tmp_path, "csv", "1", CSV_PLUGIN)
    put_model(registry, ADD_ONE, plugin=good, plugin_config={"tag": "w"})
    put_version(registry, ADD_ONE, 1)
    put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)
    gw = Gateway2(tmp_path / "gw", zookeeper, zk_root).serve()
    try:
        (record,) = [registry.get(layout.gateway(g), Gateway)[0]
                     for g in registry.children(layout.GATEWAYS)]  # fmt: skip
        assert record.plugins[ADD_ONE].serving == good and record.plugins[ADD_ONE].error is None
        answers = {invoke(gw.address, b"1,2").payload for _ in range(20)}
        assert answers == {b"w:2,3"}
        assert all(calls > 0 for calls, _ in gw.python_sessions().values())

        # a version that loads in this process only: the worker's error is the gateway's
        only_here = publish(registry, tmp_path, "csv", "2", PID_PLUGIN)
        put_model(registry, ADD_ONE, plugin=only_here,
                  plugin_config={"control_pid": str(gw.process.pid)})  # fmt: skip
        status = wait_for(
            lambda: (
                (s := registry.get(layout.gateway(GATEWAY_ID), Gateway)[0].plugins[ADD_ONE])
                and s.error
                and s
            ),
            what="the worker's load error in the gateway record",
        )
        assert status.error == "plugin csv@2 failed to load: RuntimeError: not the control process"
        assert status.serving is None  # they differ: csv@2 here, csv@1 (kept) in the worker
        assert registry.children(layout.GATEWAYS) == [GATEWAY_ID]
    finally:
        gw.process.stop()


def test_dataplane_python_is_one_process(tmp_path, zookeeper, zk_root, add_one_routed):
    gw = GatewayProcess(
        tmp_path, "--zk", zookeeper.hosts, "--root", zk_root, "--dataplane", "python",
        "--python-workers", "2",
    ).serve()  # fmt: skip
    try:
        assert predict(gw.address) == 2.0
        children = psutil.Process(gw.pid).children(recursive=True)
        assert not [c for c in children if "gateway.python_worker" in c.cmdline()]
    finally:
        gw.stop()


def test_a_start_that_fails_after_the_workers_started_leaves_nothing(tmp_path, zookeeper, zk_root):
    # NOTE: a short TMPDIR of its own (Unix socket paths are limited to 108 bytes)
    private_tmp = Path(tempfile.mkdtemp(prefix="mgw-", dir="/tmp"))
    try:
        gw = GatewayProcess(
            tmp_path, "--zk", zookeeper.hosts, "--root", zk_root, "--dataplane", "haproxy",
            "--haproxy-bin", "/bin/false", "--python-workers", "2",
            env={**os.environ, "TMPDIR": str(private_tmp)},
        )  # fmt: skip
        with pytest.raises(ProcessFailed, match="haproxy exited with code 1 at start"):
            gw.serve()
        assert gw.returncode == 1
        assert list(private_tmp.iterdir()) == []
    finally:
        shutil.rmtree(private_tmp)


async def test_a_worker_that_keeps_exiting_before_it_serves_fails_the_start_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Start-up waits for the workers as long as they make progress (reading a large fleet's
    table takes minutes), but not for one in a crash loop."""
    monkeypatch.setattr(workers, "_PROGRESS_S", 0.2)
    monkeypatch.setattr(sys, "executable", shutil.which("false"))  # every worker exits 1 at once
    ups: list[int] = []
    pool = workers.WorkerPool(
        GatewaySettings(python_workers=2),
        GatewayMetrics(CollectorRegistry()),
        on_up=ups.append,
        on_down=lambda index: None,
        on_plugins=lambda: None,
    )
    await pool.start()
    try:
        with pytest.raises(workers.WorkerError) as raised:
            await pool.wait_serving()
    finally:
        await pool.stop(1.0)
    assert str(raised.value) == (
        "Python worker 1 exited 3 times before serving (last exit code 1); its messages are "
        "in the gateway's log"
    )
    assert ups == []
