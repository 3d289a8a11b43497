"""Session loss, ZooKeeper outages, the status port, and a launched Triton that dies."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from deploy.local.zookeeper import LocalZooKeeper
from registry import Registry, layout
from registry.processes import SERVER_MARKER, alive, marked_pids
from tests.servers.zk import expire_session, wait_for
from tests.worker_agent.conftest import AgentFactory, launched_triton
from tests.worker_agent.helpers import (
    add_one_archive,
    assign,
    infer_add_one,
    metric,
    model_state,
    route,
    worker,
)


def owner(registry: Registry, path: str) -> int | None:
    stat = registry.kazoo.exists(path)
    return None if stat is None else stat.owner_session_id


def test_session_expiry_recreates_the_worker_node_and_its_routes(
    registry: Registry, start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = start_agent()
    archive = add_one_archive(tmp_path, "exp", 1.0)
    assign(registry, "w1", "exp", 1, archive.as_uri())
    wait_for(lambda: route(registry, "exp", 1, "w1"), what="route exp@1")
    zk = agent.agent.registry
    assert zk is not None
    old = zk.session_id

    expire_session(zk)
    new = zk.session_id
    assert new != old
    wait_for(lambda: owner(registry, layout.worker("w1")) == new, what="worker node re-created")
    wait_for(lambda: owner(registry, layout.route("exp", 1, "w1")) == new, what="route re-created")
    record = worker(registry, "w1")
    assert record is not None and record.models["exp@1"].state == "READY"
    found = route(registry, "exp", 1, "w1")
    assert found is not None and infer_add_one(found.address, "exp", 1, [1.0]) == [2.0]


def test_a_short_zookeeper_outage_loses_no_route_and_the_heartbeat_catches_up(
    zookeeper: LocalZooKeeper, registry: Registry, start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = start_agent(zk_operation_timeout_s=0.5)
    archive = add_one_archive(tmp_path, "outage", 1.0)
    assign(registry, "w1", "outage", 1, archive.as_uri())
    wait_for(lambda: route(registry, "outage", 1, "w1"), what="route outage@1")
    zk = agent.agent.registry
    assert zk is not None
    session = zk.session_id

    zookeeper.stop()
    wait_for(
        lambda: metric(agent.agent, "modelgate_worker_zk_connected") == 0,
        what="the agent to notice the outage",
    )
    # NOTE: a steady record is not written (so no write fails): the heartbeat goes on
    beats = metric(agent.agent, "modelgate_worker_heartbeats_total")
    wait_for(
        lambda: metric(agent.agent, "modelgate_worker_heartbeats_total") > beats,
        what="the heartbeat to go on during the outage",
    )
    time.sleep(1.0)  # the outage lasts a few seconds (well under the session timeout)
    back = time.time()
    zookeeper.start()
    wait_for(lambda: registry.connected and zk.connected, what="both clients to reconnect")

    assert zk.session_id == session
    assert owner(registry, layout.route("outage", 1, "w1")) == session
    assert owner(registry, layout.worker("w1")) == session
    wait_for(
        lambda: (w := worker(registry, "w1")) is not None and w.heartbeat > back,
        what="a heartbeat written after the outage",
    )
    assert metric(agent.agent, "modelgate_worker_zk_connected") == 1
    assert model_state(registry, "w1", "outage@1") == "READY"


def test_status_port_serves_healthz_and_metrics(
    registry: Registry, start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = start_agent()
    archive = add_one_archive(tmp_path, "stat", 1.0)
    assign(registry, "w1", "stat", 1, archive.as_uri())
    wait_for(lambda: route(registry, "stat", 1, "w1"), what="route stat@1")
    status = agent.agent.status
    assert status is not None and status.port
    record = worker(registry, "w1")
    assert record is not None and record.status_address == f"127.0.0.1:{status.port}"

    health = httpx.get(f"http://127.0.0.1:{status.port}/healthz", timeout=5)
    assert health.status_code == 200
    body = health.json()
    assert body["worker_id"] == "w1" and body["state"] == "ready" and body["backend_live"]
    assert body["models"]["stat@1"]["state"] == "READY" and body["routes"] == ["stat@1"]

    text = httpx.get(f"http://127.0.0.1:{status.port}/metrics", timeout=5).text
    for name in (
        'modelgate_worker_models{state="READY"} 1.0',
        "modelgate_worker_pull_bytes_total",
        "modelgate_worker_pull_seconds_bucket",
        "modelgate_worker_load_seconds_bucket",
        "modelgate_worker_backend_restarts_total 0.0",
        "modelgate_worker_heartbeat_failures_total",
        "modelgate_worker_zk_connected 1.0",
    ):
        assert name in text, name
    assert httpx.get(f"http://127.0.0.1:{status.port}/nope", timeout=5).status_code == 404


def test_a_killed_launched_triton_is_restarted_and_its_models_come_back(
    registry: Registry, start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = launched_triton(start_agent, tmp_path)
    archive = add_one_archive(tmp_path, "phoenix", 1.0)
    assign(registry, "w1", "phoenix", 1, archive.as_uri())
    wait_for(lambda: route(registry, "phoenix", 1, "w1"), what="route phoenix@1")
    launcher = agent.agent.launcher
    assert launcher is not None
    old_pid = launcher.pid  # type: ignore[attr-defined]
    owner = str((tmp_path / "work").resolve())

    def stubs() -> list[int]:  # Triton's Python-backend stub processes (one per model)
        triton = launcher.pid  # type: ignore[attr-defined]
        return [p for p in marked_pids(SERVER_MARKER, owner) if p != triton]

    old_stubs = wait_for(stubs, what="phoenix's Python-backend stub")
    launcher.kill()  # type: ignore[attr-defined]  (SIGKILL, as the OOM killer does)
    wait_for(
        lambda: (w := worker(registry, "w1")) is not None and w.restarts == 1,
        what="the restart to be recorded",
    )
    found = wait_for(
        lambda: (
            model_state(registry, "w1", "phoenix@1") == "READY"
            and route(registry, "phoenix", 1, "w1")
        ),
        what="phoenix@1 READY with a route again",
    )
    assert launcher.pid != old_pid  # type: ignore[attr-defined]
    assert not any(alive(p) for p in old_stubs), "the killed Triton's stubs were left running"
    assert len(stubs()) == 1 and not set(stubs()) & set(old_stubs)
    assert infer_add_one(found.address, "phoenix", 1, [41.0]) == [42.0]
    assert metric(agent.agent, "modelgate_worker_backend_restarts_total") == 1
    assert metric(agent.agent, "modelgate_worker_pulls_total", {"result": "ok"}) == 1
