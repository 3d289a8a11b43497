"""A SIGKILLed worker agent takes its launched Triton along, and the agent restarted on the
same work dir and port serves again, while calls through a gateway keep succeeding on the
other replica (real agents, Tritons, gateway and ZooKeeper; a real SIGKILL)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import psutil
import tritonclient.grpc as triton_grpc

from deploy.local.runner import Process
from deploy.local.zookeeper import LocalZooKeeper
from registry import Registry
from registry.processes import alive
from tests.servers.gateway import GatewayProcess
from tests.servers.zk import wait_for
from tests.worker_agent.helpers import add_one_archive, assign, model_state, route


def start_agent(
    zookeeper: LocalZooKeeper, zk_root: str, tmp_path: Path, worker_id: str, port: int = 0
) -> Process:
    cmd = [
        sys.executable, "-m", "worker_agent",
        "--zk", zookeeper.hosts, "--root", zk_root, "--worker-id", worker_id,
        "--launch-triton", "--launch-host", "127.0.0.1", "--triton-grpc-port", str(port),
        "--model-root", str(tmp_path / worker_id / "models"),
        "--work-dir", str(tmp_path / worker_id / "work"),
        "--advertise-host", "127.0.0.1", "--status-host", "127.0.0.1", "--status-port", "0",
        "--heartbeat-interval-s", "0.5", "--zk-session-timeout-s", "4",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_WORKER_")}
    log = tmp_path / f"{worker_id}.log"
    agent = Process(worker_id, cmd, log=log, env=env).start()
    agent.wait_ready(timeout=120)
    return agent


def tritonserver_of(agent: Process) -> int:
    children = psutil.Process(agent.pid).children()
    (pid,) = [c.pid for c in children if c.name() == "tritonserver"]
    return pid


class Traffic(threading.Thread):
    """add_one calls through the gateway until stopped; counts successes and failures."""

    def __init__(self, gateway: str) -> None:
        super().__init__(daemon=True)
        self.gateway = gateway
        self.ok = 0
        self.failures: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        client = triton_grpc.InferenceServerClient(self.gateway)
        x = np.array([1.0], dtype=np.float32)
        inp = triton_grpc.InferInput("INPUT0", [1], "FP32")
        inp.set_data_from_numpy(x)
        try:
            while not self._done.is_set():
                try:
                    out = client.infer("m", [inp], client_timeout=10).as_numpy("OUTPUT0")
                    assert out is not None and float(out[0]) == 2.0, out
                    self.ok += 1
                except Exception as err:  # counted, asserted by the test
                    self.failures.append(f"{type(err).__name__}: {err}")
        finally:
            client.close()

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=30)


def test_a_sigkilled_agent_takes_its_triton_along_and_restarts_cleanly(
    zookeeper: LocalZooKeeper, zk_root: str, registry: Registry, tmp_path: Path
) -> None:
    archive = add_one_archive(tmp_path, "m", 1.0).as_uri()
    agents = {w: start_agent(zookeeper, zk_root, tmp_path, w) for w in ("w-a", "w-b")}
    gateway = GatewayProcess(tmp_path, "--zk", zookeeper.hosts, "--root", zk_root)
    traffic: Traffic | None = None
    try:
        for worker_id in agents:
            assign(registry, worker_id, "m", 1, archive)
        first = {w: wait_for(lambda w=w: route(registry, "m", 1, w), timeout=120) for w in agents}
        gateway.serve()
        traffic = Traffic(gateway.address)
        traffic.start()
        wait_for(lambda: traffic.ok >= 20, timeout=60, what="calls through the gateway")

        triton_a = tritonserver_of(agents["w-a"])
        agents["w-a"].popen.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        agents["w-a"].popen.wait(timeout=30)  # type: ignore[union-attr]
        wait_for(lambda: not alive(triton_a), timeout=30, what="w-a's Triton to die with it")

        # the same work dir and the same port the dead Triton had
        port = int(first["w-a"].address.rsplit(":", 1)[1])
        agents["w-a"] = start_agent(zookeeper, zk_root, tmp_path, "w-a", port=port)
        wait_for(
            lambda: (
                (r := route(registry, "m", 1, "w-a")) is not None
                and model_state(registry, "w-a", "m@1") == "READY"
                and r.address.endswith(f":{port}")
            ),
            timeout=120,
            what="w-a serving m@1 again on its port",
        )
        calls = traffic.ok
        wait_for(lambda: traffic.ok >= calls + 20, timeout=60, what="calls after the restart")
    finally:
        if traffic is not None:
            traffic.stop()
        gateway.stop()
        for agent in agents.values():
            agent.stop()
    assert traffic is not None
    assert traffic.failures == [], traffic.failures[:5]
    assert "already in use" not in agents["w-a"].log_tail(200)
