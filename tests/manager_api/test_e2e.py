"""End to end: ``python -m manager_api`` + two ``python -m worker_agent`` in front of two real
Triton servers, driven with the ``modelgate`` CLI.

create model -> upload version (blob store) -> replicas placed -> routes appear -> :offline
-> routes gone and models unloaded -> :online -> back; then a worker killed -> its replica
re-placed on the other worker by the reconcile loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from examples.models import write_add_one
from registry import Registry, layout
from tests.manager_api.conftest import TOKENS
from tests.servers.gateway import GatewayProcess
from tests.servers.stack import agent_process, manager_process
from tests.servers.zk import wait_for
from worker_agent.tritonserver import TritonServer

pytestmark = pytest.mark.slow


def add_one_archive(tmp: Path) -> Path:
    repo = tmp / "src"
    write_add_one(repo, "add", 1, 1.0)
    vdir = repo / "add" / "1"
    (vdir / "config.pbtxt").write_text((repo / "add" / "config.pbtxt").read_text())
    archive = tmp / "add-1.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for f in sorted(vdir.iterdir()):
            tf.add(f, f.name)
    return archive


def routes(registry: Registry) -> set[str]:
    return set(registry.children(layout.version_routes("add", 1)))


def ready_on(triton: TritonServer) -> bool:
    client = triton_grpc.InferenceServerClient(triton.address)
    try:
        return bool(client.is_model_ready("add", "1"))
    finally:
        client.close()


def infer(address: str) -> list[float]:
    client = triton_grpc.InferenceServerClient(address)
    try:
        x = np.array([1.0, 2.0], dtype=np.float32)
        inp = triton_grpc.InferInput("INPUT0", [2], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("add", [inp], model_version="1", client_timeout=10)
        return [float(v) for v in result.as_numpy("OUTPUT0")]
    finally:
        client.close()


REQUEST = json.dumps(
    {"inputs": [{"name": "INPUT0", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
)


def infer_via_gateway(address: str) -> list[float] | None:
    """``modelgate infer`` through the gateway; None while it does not answer yet."""
    proc = subprocess.run(
        [sys.executable, "-m", "manager_api.cli", "infer", "add", "--gateway", address,
         "--data", REQUEST, "--json", "--timeout", "10"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if proc.returncode != 0:
        return None
    answer = json.loads(proc.stdout)
    assert answer["model"] == "add" and answer["version"] == "1"
    outputs = answer["payload"]["outputs"]  # a JSON payload is printed as JSON
    return [float(v) for v in outputs[0]["data"]]


@pytest.mark.timeout(240)
def test_deploy_offline_online_and_failover(
    zookeeper, zk_root, registry: Registry, tritons, procs, tmp_path: Path
):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    manager = manager_process(
        tmp_path, zookeeper.hosts, zk_root, {"MODELGATE_MANAGER_RECONCILE_INTERVAL_S": "1"}
    )
    procs.append(manager.start())
    manager.wait_ready(timeout=60)
    url = f"http://127.0.0.1:{manager.port('http')}"

    agents = {}
    for worker_id, triton in zip(("wa", "wb"), tritons, strict=True):
        agent = agent_process(tmp_path, zookeeper.hosts, zk_root, worker_id, triton, url)
        procs.append(agent.start())
        agents[worker_id] = agent
    wait_for(
        lambda: set(registry.children(layout.WORKERS)) == {"wa", "wb"},
        timeout=90,
        what="both workers registered",
    )

    gateway = GatewayProcess(tmp_path, "--zk", zookeeper.hosts, "--root", zk_root, env=env)
    procs.append(gateway)
    gw_address = gateway.serve().address

    def mg(*args: str) -> str:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "manager_api.cli",
                "--manager",
                url,
                *args,
            ],
            env={**os.environ, "MODELGATE_TOKEN": TOKENS["admin"]},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc.stdout

    mg("models", "create", "add", "--backend", "triton", "--replicas", "2")
    mg("models", "deploy", "add", "--file", str(add_one_archive(tmp_path)), "--label", "stable")
    wait_for(lambda: routes(registry) == {"wa", "wb"}, timeout=90, what="routes on both workers")
    assert infer(tritons[0].address) == [2.0, 3.0] == infer(tritons[1].address)
    # one call through the gateway with the CLI (modelgate.v1.Gateway/Invoke, JSON codec)
    assert wait_for(lambda: infer_via_gateway(gw_address), timeout=60, what="gateway answer") == [
        2.0,
        3.0,
    ]
    unknown = subprocess.run(
        [sys.executable, "-m", "manager_api.cli", "infer", "nope", "--gateway", gw_address,
         "--data", REQUEST],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr, unknown.stderr
    status = json.loads(mg("models", "status", "add", "--json"))
    assert status["ready"] == 2 and status["message"] == "ok"

    mg("models", "offline", "add")
    wait_for(lambda: routes(registry) == set(), timeout=60, what="routes gone")
    wait_for(
        lambda: not ready_on(tritons[0]) and not ready_on(tritons[1]),
        timeout=60,
        what="the model unloaded from both Tritons",
    )
    mg("models", "online", "add")
    wait_for(lambda: routes(registry) == {"wa", "wb"}, timeout=90, what="routes back")

    # one replica; kill its worker: the reconcile loop re-places it on the other one
    mg("models", "update", "add", "--replicas", "1")
    wait_for(lambda: len(routes(registry)) == 1, timeout=60, what="one route left")
    (holder,) = routes(registry)
    other = ({"wa", "wb"} - {holder}).pop()
    os.killpg(agents[holder].pid, signal.SIGKILL)
    wait_for(lambda: routes(registry) == {other}, timeout=90, what=f"the replica on {other}")
    assert infer(tritons[0 if other == "wa" else 1].address) == [2.0, 3.0]
    assert wait_for(lambda: infer_via_gateway(gw_address), timeout=60, what="gateway answer") == [
        2.0,
        3.0,
    ]
