"""Out of memory on a real, launched Triton: the memory guard kills a server over its
capacity (and a SIGKILL from outside near it counts too); the supervisor restarts it; the
copy loaded last is recorded in ``Worker.ooms``, FAILED and not reloaded while the record
stands; the others come back with their routes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tritonclient.grpc as triton_grpc

from examples.models import write_add_one
from registry import Registry
from registry.records import Worker
from tests.servers.zk import wait_for
from tests.worker_agent.conftest import AgentFactory, launched_triton
from tests.worker_agent.helpers import (
    AgentThread,
    add_one_archive,
    assign,
    infer_add_one,
    metric,
    model_state,
    route,
    unassign,
    worker,
)
from worker_agent.tritonserver import TritonServer
from worker_agent.usage import UsageMeter


@dataclass(frozen=True)
class TreeMemory:
    """Measured memory (MiB) of a tritonserver tree with none, one and two Python models."""

    empty: float
    one: float
    two: float

    @property
    def fits_one_not_two(self) -> int:
        return int((self.one + self.two) / 2)


@pytest.fixture(scope="module")
def tree_memory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TreeMemory]:
    """Measure first what one and two of the test's Python models take on this machine."""
    workdir = tmp_path_factory.mktemp("measure-triton")
    for name in ("first", "second"):
        write_add_one(workdir / "models", name, 1, 1.0)
    server = TritonServer(workdir / "models", workdir)
    server.start()
    meter = UsageMeter()
    try:
        assert server.pid is not None
        sizes = []
        client = triton_grpc.InferenceServerClient(server.address)
        for name in (None, "first", "second"):
            if name is not None:
                client.load_model(name)
            measured = meter.measure(server.pid)
            assert measured is not None
            sizes.append(measured.server.memory_mb)
        client.close()
        assert sorted(measured.models) == ["first@1", "second@1"]
        assert sizes[0] < sizes[1] < sizes[2], sizes
        yield TreeMemory(*sizes)
    finally:
        server.stop()


def triton_has(agent: AgentThread, model: str) -> bool:
    launcher = agent.agent.launcher
    assert launcher is not None
    client = triton_grpc.InferenceServerClient(launcher.address)
    try:
        return bool(client.is_model_ready(model, "1"))
    except Exception:
        return False
    finally:
        client.close()


def heartbeats_pass(agent: AgentThread, count: int) -> None:
    beats = metric(agent.agent, "modelgate_worker_heartbeats_total")
    wait_for(
        lambda: metric(agent.agent, "modelgate_worker_heartbeats_total") >= beats + count,
        what=f"{count} heartbeats",
    )


def serving_one(
    registry: Registry, start_agent: AgentFactory, tmp_path: Path, model: str, **settings: object
) -> AgentThread:
    """A worker ``w1`` on a launched Triton (``settings`` of the worker) serving ``model``
    version 1 (adds 1), its route written."""
    agent = launched_triton(start_agent, tmp_path, **settings)
    assign(registry, "w1", model, 1, add_one_archive(tmp_path, model, 1.0).as_uri())
    wait_for(lambda: route(registry, model, 1, "w1"), what=f"route {model}@1")
    return agent


def restarted_out_of_memory(registry: Registry, key: str, what: str) -> Worker:
    """``w1``'s record once its server restarted once with ``key`` recorded out of memory."""
    found: Worker = wait_for(
        lambda: (w := worker(registry, "w1")) and w.restarts == 1 and key in w.ooms and w,
        what=what,
    )
    return found


def test_a_server_over_its_capacity_is_killed_and_the_copy_loaded_last_stays_out(
    registry: Registry, start_agent: AgentFactory, tmp_path: Path, tree_memory: TreeMemory
) -> None:
    capacity = tree_memory.fits_one_not_two
    agent = serving_one(
        registry, start_agent, tmp_path, "first",
        capacity_memory_mb=capacity, oom_retry_margin_mb=1.0,
    )  # fmt: skip
    assert worker(registry, "w1").ooms == {}

    assign(registry, "w1", "second", 1, add_one_archive(tmp_path, "second", 2.0).as_uri())
    record = restarted_out_of_memory(
        registry, "second@1", "the guard to kill the server and record second@1"
    )
    oom = record.ooms["second@1"]
    assert oom.memory_mb > capacity and oom.capacity_mb == capacity
    assert set(record.ooms) == {"second@1"}
    assert metric(agent.agent, "modelgate_worker_out_of_memory_total", {"cause": "guard"}) == 1

    found = wait_for(
        lambda: (
            model_state(registry, "w1", "first@1") == "READY" and route(registry, "first", 1, "w1")
        ),
        what="first@1 READY with a route again",
    )
    assert infer_add_one(found.address, "first", 1, [1.0]) == [2.0]
    heartbeats_pass(agent, 5)  # memory measured after the restart, with first@1 alone
    record = worker(registry, "w1")
    assert record is not None and record.restarts == 1
    assert record.models["second@1"].state == "FAILED"
    assert "out of memory" in (record.models["second@1"].error or "")
    assert f"of {capacity} MiB" in (record.models["second@1"].error or "")
    assert route(registry, "second", 1, "w1") is None and not triton_has(agent, "second")
    assert record.usage is not None and record.usage.memory_mb <= capacity

    # Memory allows once first@1 is gone: second@1 is loaded again and fits alone.
    unassign(registry, "w1", "first", 1)
    found = wait_for(lambda: route(registry, "second", 1, "w1"), what="second@1 loaded again")
    assert infer_add_one(found.address, "second", 1, [1.0]) == [3.0]
    record = worker(registry, "w1")
    assert record is not None and record.ooms == {} and record.restarts == 1
    assert model_state(registry, "w1", "second@1") == "READY"


def test_a_sigkill_near_the_capacity_is_out_of_memory_until_the_copy_is_unassigned(
    registry: Registry, start_agent: AgentFactory, tmp_path: Path, tree_memory: TreeMemory
) -> None:
    capacity = tree_memory.fits_one_not_two
    agent = serving_one(
        registry, start_agent, tmp_path, "alone", capacity_memory_mb=capacity, oom_sigkill_ratio=0.5
    )
    wait_for(
        lambda: (w := worker(registry, "w1")) and "alone@1" in w.model_usage,
        what="alone@1 measured",
    )
    launcher = agent.agent.launcher
    assert launcher is not None
    launcher.kill()  # SIGKILL from outside, as the kernel's OOM killer does

    record = restarted_out_of_memory(registry, "alone@1", "alone@1 recorded out of memory")
    assert record.ooms["alone@1"].capacity_mb == capacity
    assert metric(agent.agent, "modelgate_worker_out_of_memory_total", {"cause": "sigkill"}) == 1
    wait_for(lambda: model_state(registry, "w1", "alone@1") == "FAILED", what="alone@1 FAILED")
    heartbeats_pass(agent, 5)
    assert model_state(registry, "w1", "alone@1") == "FAILED"
    assert route(registry, "alone", 1, "w1") is None and not triton_has(agent, "alone")

    unassign(registry, "w1", "alone", 1)
    wait_for(
        lambda: (w := worker(registry, "w1")) and w.ooms == {} and "alone@1" not in w.models,
        what="the record to go with the assignment",
    )


def test_a_server_over_its_capacity_with_no_copy_loaded_is_not_killed(
    registry: Registry, start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = launched_triton(start_agent, tmp_path, capacity_memory_mb=1)
    wait_for(
        lambda: (w := worker(registry, "w1")) and w.usage is not None and w,
        what="the empty server measured",
    )
    heartbeats_pass(agent, 5)
    record = worker(registry, "w1")
    assert record is not None and record.usage is not None and record.usage.memory_mb > 1
    assert record.restarts == 0 and record.ooms == {}
    assert metric(agent.agent, "modelgate_worker_out_of_memory_total", {"cause": "guard"}) == 0
