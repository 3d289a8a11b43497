"""The reconcile loop against a real ZooKeeper with simulated workers (own sessions)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from manager_api.app import create_app
from manager_api.metrics import ManagerMetrics
from manager_api.reconcile import Reconciler, reconcile_once
from registry import Registry, layout
from registry.records import Model, ModelVersion, Route, WorkerSpec
from tests.manager_api.conftest import auth, settings_for, token_store
from tests.servers.zk import expire_session, wait_for


def assigned(registry: Registry, model: str = "m", version: int = 1) -> set[str]:
    key = layout.assignment_key(model, version)
    return {
        w
        for w in registry.children(layout.ASSIGNMENTS)
        if key in registry.children(layout.assignments(w))
    }


def add_model(registry: Registry, name: str = "m", **kw) -> None:
    registry.create(layout.model(name), Model(name=name, backend="triton", **kw))
    registry.create(
        layout.version(name, 1), ModelVersion(version=1, artifact_uri=f"file:///models/{name}")
    )


@pytest.fixture
def reconcilers(zookeeper, zk_root) -> Iterator[list[Reconciler]]:
    """Factory of reconcile loops, each with its own ZooKeeper session (= its own manager)."""
    made: list[tuple[Reconciler, Registry]] = []

    def make(name: str) -> Reconciler:
        reg = Registry(zookeeper.hosts, zk_root, connect_timeout=10).start()
        rec = Reconciler(reg, ManagerMetrics(CollectorRegistry()), name, interval=0.5)
        rec.start()
        made.append((rec, reg))
        return rec

    yield make  # type: ignore[misc]
    for rec, reg in made:
        rec.stop()
        reg.stop()


def test_pass_is_idempotent_and_removes_stale(registry: Registry, sim_workers):
    sim_workers("a")
    sim_workers("b")
    add_model(registry, replicas=2)
    first = reconcile_once(registry)
    assert sorted(w for w, _ in first.created) == ["a", "b"]
    second = reconcile_once(registry)
    assert second.created == [] and second.removed == []
    # scale down removes one, delete removes all
    m, v = registry.get(layout.model("m"), Model)
    m.replicas = 1
    registry.update(layout.model("m"), m, v)
    assert len(reconcile_once(registry).removed) == 1
    assert len(assigned(registry)) == 1
    registry.delete(layout.model("m"), recursive=True)
    reconcile_once(registry)
    assert assigned(registry) == set()


def test_dead_worker_replica_is_replaced(registry: Registry, sim_workers, reconcilers):
    workers = {"a": sim_workers("a"), "b": sim_workers("b")}
    add_model(registry, replicas=1)
    rec = reconcilers("mgr-1")
    first = wait_for(lambda: assigned(registry), timeout=20, what="a replica to be placed")
    (holder,) = first
    other = ({"a", "b"} - {holder}).pop()
    workers[holder].kill()  # its session closes: /workers/<holder> vanishes
    wait_for(
        lambda: assigned(registry) == {other}, timeout=20, what=f"the replica to move to {other}"
    )
    assert rec.is_leader and rec.last_error is None


def test_two_managers_exactly_one_reconciles(registry: Registry, sim_workers, reconcilers):
    sim_workers("a")
    add_model(registry)
    one, two = reconcilers("mgr-1"), reconcilers("mgr-2")
    wait_for(lambda: one.is_leader or two.is_leader, timeout=20, what="a leader")
    wait_for(lambda: assigned(registry) == {"a"}, timeout=20, what="the replica placed")
    leader, follower = (one, two) if one.is_leader else (two, one)
    assert not follower.is_leader
    # NOTE: the assignment is written during the leader's pass; the pass counts once it ends
    wait_for(lambda: leader.passes >= 1, timeout=20, what="the leader's pass to complete")
    assert follower.passes == 0
    # the leader goes away: the follower takes over and keeps reconciling
    leader.stop()
    leader.registry.stop()
    wait_for(lambda: follower.is_leader, timeout=30, what="the follower to take over")
    add_model(registry, "n")
    wait_for(lambda: assigned(registry, "n") == {"a"}, timeout=20, what="the new leader to place")
    assert follower.passes >= 1


def test_leader_session_expiry_reelects(registry: Registry, sim_workers, reconcilers):
    sim_workers("a")
    rec = reconcilers("mgr-1")
    wait_for(lambda: rec.is_leader, timeout=20, what="leadership")
    expire_session(rec.registry)
    add_model(registry)
    wait_for(lambda: assigned(registry) == {"a"}, timeout=30, what="reconcile after expiry")
    wait_for(lambda: rec.is_leader, timeout=20, what="leadership again")


def test_drain_moves_replicas_make_before_break(registry: Registry, sim_workers):
    a, b = sim_workers("a"), sim_workers("b")
    add_model(registry)
    reconcile_once(registry)
    (holder,) = assigned(registry)
    target = b if holder == "a" else a
    holder_reg = a if holder == "a" else b

    registry.put(layout.assignments(holder), WorkerSpec(cordoned=True, draining=True))
    reconcile_once(registry)
    # replacement assigned, the draining worker keeps its replica until it is READY
    assert assigned(registry) == {holder, target.record.worker_id}
    holder_reg.registry.register_ephemeral(
        layout.route("m", 1, holder),
        Route(model="m", version=1, worker_id=holder, address="x:1", protocol="kserve"),
    )
    target.registry.register_ephemeral(
        layout.route("m", 1, target.record.worker_id),
        Route(
            model="m",
            version=1,
            worker_id=target.record.worker_id,
            address="x:2",
            protocol="kserve",
        ),
    )
    reconcile_once(registry)
    assert assigned(registry) == {target.record.worker_id}


def test_offline_and_online_through_the_api(zookeeper, zk_root, registry, tmp_path, sim_workers):
    sim_workers("a")
    sim_workers("b")
    settings = settings_for(zookeeper, zk_root, tmp_path, manager_id="api-mgr")
    app = create_app(settings, registry, tokens=token_store())
    with TestClient(app) as client:
        r = client.post(
            "/v1/models",
            json={"name": "m", "backend": "triton", "replicas": 2},
            headers=auth("admin"),
        )
        assert r.status_code == 201
        client.post(
            "/v1/models/m/versions", json={"artifact_uri": "file:///m"}, headers=auth("admin")
        )
        wait_for(lambda: assigned(registry) == {"a", "b"}, timeout=20, what="2 replicas placed")
        status = client.get("/v1/models/m/status", headers=auth("viewer")).json()
        assert status["versions"][0]["assigned"] == 2
        assert status["versions"][0]["message"] == "0/2 ready: loading"
        assert client.get("/healthz").json()["leader"] is True

        client.post("/v1/models/m:offline", headers=auth("admin"))
        wait_for(lambda: assigned(registry) == set(), timeout=20, what="assignments removed")
        assert client.get("/v1/models/m/status", headers=auth("viewer")).json()["message"] == (
            "offline"
        )
        client.post("/v1/models/m:online", headers=auth("admin"))
        wait_for(lambda: assigned(registry) == {"a", "b"}, timeout=20, what="replicas back")
        metrics = client.get("/metrics").text
        assert "modelgate_manager_leader 1.0" in metrics
        assert 'modelgate_manager_assignment_changes_total{change="removed"} 2.0' in metrics


def test_a_shortfall_is_logged_when_it_appears_or_changes_not_every_pass(
    registry: Registry, sim_workers, reconcilers, caplog
):
    caplog.set_level("INFO", logger="manager_api.reconcile")
    sim_workers("a")
    add_model(registry, replicas=2)
    rec = reconcilers("m1")
    wait_for(lambda: rec.passes >= 5, timeout=30)  # interval 0.5 s: passes keep coming
    shortfall_lines = [r for r in caplog.records if "1/2 placed" in r.getMessage()]
    assert len(shortfall_lines) == 1, [r.getMessage() for r in shortfall_lines]
    sim_workers("b")
    wait_for(lambda: assigned(registry) == {"a", "b"}, timeout=30)
    passes = rec.passes
    wait_for(lambda: rec.passes >= passes + 2, timeout=30)
    assert any("m@1: every replica placed" in r.getMessage() for r in caplog.records)
    assert len([r for r in caplog.records if "placed:" in r.getMessage()]) == 1
