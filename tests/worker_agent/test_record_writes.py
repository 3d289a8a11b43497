"""The worker record is written when what its readers use changed, or to refresh its
heartbeat time: a steady worker costs ZooKeeper and every watcher nothing."""

from __future__ import annotations

from pathlib import Path

from registry import Registry, layout
from registry.records import Usage, Worker
from tests.servers.zk import expire_session, wait_for
from tests.worker_agent.conftest import AgentFactory
from tests.worker_agent.helpers import add_one_archive, assign, metric, route, worker
from worker_agent.agent import _usage_steady


def node_version(registry: Registry) -> int:
    _, version = registry.get(layout.worker("w1"), Worker)
    return version


def beats(agent, count: int) -> None:
    """Wait for ``count`` more heartbeats of ``agent``."""
    start = metric(agent.agent, "modelgate_worker_heartbeats_total")
    wait_for(
        lambda: metric(agent.agent, "modelgate_worker_heartbeats_total") >= start + count,
        what=f"{count} heartbeats",
    )


def writes(agent, reason: str) -> float:
    return metric(agent.agent, "modelgate_worker_record_writes_total", {"reason": reason})


def test_a_steady_worker_writes_its_record_only_to_refresh_the_heartbeat(
    registry: Registry, start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = start_agent(heartbeat_interval_s=0.1, heartbeat_refresh_s=2.0)
    archive = add_one_archive(tmp_path, "steady", 1.0)
    assign(registry, "w1", "steady", 1, archive.as_uri())
    wait_for(lambda: route(registry, "steady", 1, "w1"), what="route steady@1")
    beats(agent, 2)
    before, stamp = node_version(registry), worker(registry, "w1").heartbeat
    skipped = writes(agent, "skipped")
    beats(agent, 5)  # 0.5 s: well inside the 2 s refresh
    assert node_version(registry) == before
    assert writes(agent, "skipped") >= skipped + 5
    # the refresh comes, with a newer heartbeat time and nothing else changed
    wait_for(lambda: node_version(registry) > before, what="the heartbeat refresh")
    assert worker(registry, "w1").heartbeat > stamp
    assert writes(agent, "refresh") >= 1

    # a change readers use is written at the next heartbeat: a new model's health
    changed = writes(agent, "change")
    assign(registry, "w1", "second", 1, add_one_archive(tmp_path, "second", 2.0).as_uri())
    wait_for(lambda: "second@1" in worker(registry, "w1").models, what="second@1's health")
    assert writes(agent, "change") > changed


def test_after_a_session_expiry_the_record_is_written_whole(
    registry: Registry, start_agent: AgentFactory
) -> None:
    agent = start_agent(heartbeat_interval_s=0.1, heartbeat_refresh_s=600.0)
    wait_for(lambda: worker(registry, "w1") is not None, what="the worker record")
    beats(agent, 3)
    stamp = worker(registry, "w1").heartbeat
    expire_session(agent.agent.registry)
    wait_for(
        lambda: (w := worker(registry, "w1")) is not None and w.heartbeat > stamp,
        what="the record written again after the expiry",
    )


def record(cpu: float, memory: float, models: dict[str, tuple[float, float]]) -> Worker:
    return Worker(
        worker_id="w1",
        host="h",
        backend="triton",
        address="h:8001",
        capacity_cpu=2.0,
        capacity_memory_mb=1000,
        usage=Usage(cpu=cpu, memory_mb=memory),
        model_usage={k: Usage(cpu=c, memory_mb=m) for k, (c, m) in models.items()},
    )


def test_usage_is_steady_within_one_step():
    old = record(0.5, 400, {"a@1": (0.1, 100)})
    # server: 10% of 2 cores / 1000 MiB; a model: 10% of 2 cores, 10% of its own memory
    assert _usage_steady(record(0.69, 499, {"a@1": (0.29, 109)}), old)
    assert not _usage_steady(record(0.71, 400, {"a@1": (0.1, 100)}), old)
    assert not _usage_steady(record(0.5, 501, {"a@1": (0.1, 100)}), old)
    assert not _usage_steady(record(0.5, 400, {"a@1": (0.1, 111)}), old)
    assert not _usage_steady(record(0.5, 400, {"a@1": (0.1, 100), "b@1": (0, 1)}), old)
    assert not _usage_steady(old.model_copy(update={"usage": None}), old)
