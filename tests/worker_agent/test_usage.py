"""What the model server really uses, measured by the agent: the process tree of a launched
Triton in the worker record and the agent's metrics, per Python-backend model too."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from registry import Registry
from tests.servers.zk import wait_for
from tests.worker_agent.conftest import AgentFactory, launched_triton
from tests.worker_agent.helpers import (
    add_one_archive,
    assign,
    infer_add_one,
    metric,
    route,
    unassign,
    worker,
)
from worker_agent.usage import UsageMeter, stub_model_key

#: The argv of a Python-backend stub, as Triton 2.51 starts it (seen with ``ps``).
STUB_ARGV = [
    "/w/backends/python/triton_python_backend_stub",
    "/srv/models/fraud-v2/3/model.py",
    "triton_python_backend_shm_region_933f9a25",
    "1048576",
    "1048576",
    "30657",
    "/w/backends/python",
    "336",
    "fraud-v2_0_0",
    "DEFAULT",
]


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (STUB_ARGV, "fraud-v2@3"),
        (["/opt/tritonserver/bin/tritonserver", "--model-repository=/srv/models"], None),
        ([STUB_ARGV[0], "/srv/models/fraud-v2/latest/model.py"], None),
        ([STUB_ARGV[0], "/srv/models/Not_A_Model/1/model.py"], None),
        ([STUB_ARGV[0]], None),
    ],
)
def test_a_stub_is_mapped_to_the_model_its_argv_names(argv: list[str], key: str | None) -> None:
    assert stub_model_key(argv) == key


def test_the_meter_counts_every_process_of_the_tree_and_reports_a_gone_root() -> None:
    # A parent (sleeping) whose child holds 64 MiB and keeps one core busy.
    child = "b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096])\nwhile True: pass"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])",
        ]
    )
    try:
        meter = UsageMeter()
        measured = wait_for(
            lambda: (m := meter.measure(parent.pid)) and m.server.memory_mb > 64 and m,
            what="the child's 64 MiB in the tree's memory",
        )
        assert measured.models == {}  # no Python-backend stub in this tree
        # NOTE: a measuring window, not a wait for a condition: CPU time moves in 10 ms
        # ticks, so over a few ms one tick would read as several cores
        time.sleep(0.5)
        busy = meter.measure(parent.pid)
        assert busy is not None and 0 < busy.server.cpu <= os.cpu_count()  # type: ignore[operator]
    finally:
        for proc in psutil.Process(parent.pid).children(recursive=True):
            proc.kill()
        parent.kill()
        parent.wait()
    assert meter.measure(parent.pid) is None


def test_the_launched_servers_use_is_in_the_worker_record_and_the_metrics(
    registry: Registry, start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = launched_triton(start_agent, tmp_path)
    for name in ("ua", "ub"):
        archive = add_one_archive(tmp_path, name, 1.0)
        assign(registry, "w1", name, 1, archive.as_uri())
    wait_for(
        lambda: route(registry, "ua", 1, "w1") and route(registry, "ub", 1, "w1"), what="routes"
    )
    record = wait_for(
        lambda: (w := worker(registry, "w1")) and set(w.model_usage) == {"ua@1", "ub@1"} and w,
        what="one model_usage entry per loaded Python model",
    )
    assert record.usage is not None and record.usage.memory_mb > 0
    assert record.capacity_cpu == len(os.sched_getaffinity(0))
    for key, usage in record.model_usage.items():
        assert 0 < usage.memory_mb < record.usage.memory_mb, key
    # The server's own process is in the total besides the two stubs.
    assert sum(u.memory_mb for u in record.model_usage.values()) < record.usage.memory_mb

    # Calls keep ua's stub busy: its CPU shows in its own entry.
    found = route(registry, "ua", 1, "w1")
    assert found is not None
    stop = threading.Event()

    def call() -> None:
        while not stop.is_set():
            infer_add_one(found.address, "ua", 1, [1.0] * 1024)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    try:
        busy = wait_for(
            lambda: (w := worker(registry, "w1")) and w.model_usage["ua@1"].cpu > 0 and w,
            what="ua's stub CPU under calls",
        )
    finally:
        stop.set()
        caller.join(30)
    assert busy.usage is not None and busy.usage.cpu >= busy.model_usage["ua@1"].cpu

    status = agent.agent.status
    assert status is not None
    text = httpx.get(f"http://127.0.0.1:{status.port}/metrics", timeout=5).text
    assert 'modelgate_worker_model_memory_mb{model="ua",version="1"}' in text
    assert 'modelgate_worker_model_cpu_cores{model="ub",version="1"}' in text
    assert metric(agent.agent, "modelgate_worker_server_memory_mb") > 0
    assert metric(agent.agent, "modelgate_worker_usage_measure_seconds_count") > 0

    unassign(registry, "w1", "ub", 1)
    wait_for(lambda: set(worker(registry, "w1").model_usage) == {"ua@1"}, what="ub's entry to go")
    wait_for(
        lambda: 'model="ub"' not in httpx.get(f"http://127.0.0.1:{status.port}/metrics").text,
        what="ub's series to go",
    )


def test_a_server_the_agent_did_not_launch_is_not_measured(
    registry: Registry, start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = start_agent(capacity_cpu=3.5)
    archive = add_one_archive(tmp_path, "notmine", 1.0)
    assign(registry, "w1", "notmine", 1, archive.as_uri())
    wait_for(lambda: route(registry, "notmine", 1, "w1"), what="route notmine@1")
    beats = metric(agent.agent, "modelgate_worker_heartbeats_total")
    wait_for(
        lambda: metric(agent.agent, "modelgate_worker_heartbeats_total") > beats + 2,
        what="a few heartbeats",
    )
    record = worker(registry, "w1")
    assert record is not None and record.capacity_cpu == 3.5
    assert record.usage is None and record.model_usage == {} and record.ooms == {}
