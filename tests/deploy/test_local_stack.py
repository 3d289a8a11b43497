"""The one-machine stack (``make up``): it starts, answers health checks, and stops clean."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.local.leftovers import stack_pids
from deploy.local.stack import LocalStack, StackError
from registry.processes import alive

pytestmark = pytest.mark.slow


def _naming(run_dir: Path) -> list[int]:
    """Live processes (other than this one) whose command line names ``run_dir``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if (
                proc.pid != os.getpid()
                and alive(proc.pid)
                and str(run_dir) in " ".join(proc.cmdline())
            ):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _healthcheck_module():  # type: ignore[no-untyped-def]
    import importlib.util

    from deploy.local.runner import REPO

    spec = importlib.util.spec_from_file_location("hc", REPO / "deploy/docker/healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_reads_the_port_from_flags_then_env_then_default() -> None:
    hc = _healthcheck_module()
    assert hc.port_of("gateway", ["python", "-m", "gateway"], {}) == 8500
    env = {"MODELGATE_GATEWAY_PORT": "9000", "MODELGATE_WORKER_STATUS_PORT": "9300"}
    assert hc.port_of("gateway", ["python", "-m", "gateway"], env) == 9000
    assert hc.port_of("gateway", ["python", "-m", "gateway", "--port", "9100"], env) == 9100
    assert hc.port_of("gateway", ["python", "-m", "gateway", "--port=9101"], env) == 9101
    assert hc.port_of("worker_agent", ["python", "-m", "worker_agent"], env) == 9300
    assert hc.port_of("manager_api", ["python", "-m", "manager_api"], env) == 8080


def _free_ports() -> dict[str, object]:
    return {
        "zk_port": 0,
        "gateway_port": 0,
        "gateway_metrics_port": 0,
        "manager_port": 0,
        "triton_ports": (0, 0),
        "worker_status_ports": (0, 0),
        "ready_timeout": 60.0,
    }


def test_stack_starts_answers_health_and_stops_clean(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    stack = LocalStack(run_dir=run_dir, **_free_ports())  # type: ignore[arg-type]
    try:
        stack.start()
        pids = dict(stack.pids)
        assert set(pids) == {"zookeeper", "manager", "gateway", "worker-1", "worker-2"}
        tritons = [stack.triton_pid(i) for i in range(2)]
        assert all(tritons), f"each worker launched a tritonserver: {tritons}"
        every = set(stack_pids(run_dir))
        assert set(pids.values()) | set(tritons) <= every  # type: ignore[arg-type]
        # NOTE: the gateway's Python workers (found by the marker like the rest) take a
        # private /tmp directory: their sockets' paths must fit HAProxy's 97 bytes
        workers = {pid for pid in every if "gateway.python_worker" in psutil.Process(pid).cmdline()}
        assert len(workers) == (os.cpu_count() or 1) - 1, "one Python process per core"
        assert every - workers <= set(_naming(run_dir)), "every process names the run dir"

        with grpc.insecure_channel(stack.gateway_address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        health = httpx.get(f"{stack.manager_url}/healthz", timeout=5)
        assert health.status_code == 200, health.text
        assert health.json()["zookeeper"] is True

        auth = {"Authorization": f"Bearer {stack.admin_token}"}
        workers = httpx.get(f"{stack.manager_url}/v1/workers", headers=auth, timeout=5).json()
        assert sorted(w["worker_id"] for w in workers) == ["local-1", "local-2"]
        assert httpx.get(f"{stack.manager_url}/v1/workers", timeout=5).status_code == 401

        # The container image's HEALTHCHECK probes speak to the real roles.
        healthcheck = _healthcheck_module()
        assert healthcheck.probe("gateway", _port(stack.gateway_address)) == (True, "SERVING")
        assert healthcheck.probe("manager_api", _port(stack.manager_url))[0]
        assert healthcheck.probe("worker_agent", stack.workers[0].status_port)[0]
        assert not healthcheck.probe("manager_api", stack.workers[0].triton_port)[0]

        for pid in every:  # tokens travel in the environment, never on a command line
            try:
                cmdline = " ".join(psutil.Process(pid).cmdline())
            except psutil.Error:
                continue  # exited meanwhile
            assert stack.internal_token not in cmdline and stack.admin_token not in cmdline

        logs = run_dir / "logs"
        for name in ("zookeeper", "manager", "gateway", "worker-1", "worker-2", "triton-1"):
            assert (logs / f"{name}.log").stat().st_size > 0, name
        assert os.stat(run_dir / "stack.json").st_mode & 0o077 == 0
    finally:
        stack.stop()

    left = [pid for pid in every if alive(pid)]
    assert left == [], f"processes of the stack still running after stop(): {left}"
    assert stack_pids(run_dir) == []
    assert _naming(run_dir) == [], "a process still names the stack's run dir"
    assert not (run_dir / "pids").exists() and not (run_dir / "stack.json").exists()


def test_second_stack_on_the_same_run_dir_is_refused(tmp_path: Path) -> None:
    # Only the lock is exercised: the first stack holds it without starting anything.
    first = LocalStack(run_dir=tmp_path, **_free_ports())  # type: ignore[arg-type]
    first._prepare()
    try:
        second = LocalStack(run_dir=tmp_path, **_free_ports())  # type: ignore[arg-type]
        with pytest.raises(StackError, match="another local stack is running"):
            second.start()
    finally:
        first.stop()
    # Once the first one is gone, the dir is usable again (no stale lock).
    again = LocalStack(run_dir=tmp_path, **_free_ports())  # type: ignore[arg-type]
    again._prepare()
    again.stop()


def test_leftovers_of_a_crashed_run_are_killed_by_the_next_start(tmp_path: Path) -> None:
    import json
    import signal
    import subprocess
    import sys
    import time

    from deploy.local.runner import REPO

    run_dir = tmp_path / "run"
    args = ["--run-dir", str(run_dir), "--zk-port", "0", "--gateway-port", "0"]
    args += ["--gateway-metrics-port", "0", "--manager-port", "0", "--ready-timeout", "60"]
    args += ["--triton-ports", "0", "0", "--worker-status-ports", "0", "0"]
    script = subprocess.Popen(
        [sys.executable, str(REPO / "deploy" / "local" / "stack.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert script.stdout is not None
        deadline = time.monotonic() + 90
        for line in script.stdout:
            if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
                break
        state = json.loads((run_dir / "stack.json").read_text())
        old = set(stack_pids(run_dir))
        assert set(state["pids"].values()) <= old
    finally:
        script.send_signal(signal.SIGKILL)  # a crash: no clean-up runs
        script.wait(timeout=10)
    assert any(alive(pid) for pid in old), "the crash left the stack's processes running"

    # The next start takes the lock (the crashed process's flock died with it) and kills
    # the leftovers before wiping the state.
    nxt = LocalStack(run_dir=run_dir, **_free_ports())  # type: ignore[arg-type]
    nxt._prepare()
    try:
        assert [pid for pid in old if alive(pid)] == []
        assert not (run_dir / "stack.json").exists()
    finally:
        nxt.stop()


def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {**_free_ports(), "gateway_port": port}
        stack = LocalStack(run_dir=tmp_path / "run", **ports)  # type: ignore[arg-type]
        with pytest.raises(StackError, match=f"gateway port {port}"):
            stack.start()
    assert stack_pids(tmp_path / "run") == []
    assert _naming(tmp_path / "run") == []
