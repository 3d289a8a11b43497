"""A label moves between versions in one ZooKeeper transaction (real ZooKeeper, real app):
never on two versions or on none, whatever another writer does meanwhile."""

from __future__ import annotations

from fastapi.testclient import TestClient

from registry import Registry, layout
from registry.client import Transaction
from registry.records import ModelVersion
from tests.manager_api.conftest import auth
from tests.manager_api.test_api import create_model, problem


def labels(registry: Registry) -> dict[int, list[str]]:
    return {
        rec.version: rec.labels
        for rec in registry.read_children(layout.versions("m1"), ModelVersion).values()
    }


def add_version(client: TestClient, n: int, *labels: str):
    return client.post(
        "/v1/models/m1/versions",
        json={"artifact_uri": f"file:///models/m1/{n}", "labels": list(labels)},
        headers=auth("admin"),
    )


def interfere(monkeypatch, registry: Registry, times: int) -> list[int]:
    """Before each of the next ``times`` commits, another writer adds a label to version 1
    (which the commit is about to take "stable" off); returns the commits seen."""
    commits: list[int] = []
    real_commit = Transaction.commit

    def commit(txn: Transaction) -> None:
        commits.append(1)
        if len(commits) <= times:
            path = layout.version("m1", 1)
            rec, ver = registry.get(path, ModelVersion)
            registry.update(
                path, rec.model_copy(update={"labels": [*rec.labels, f"x{len(commits)}"]}), ver
            )
        real_commit(txn)

    monkeypatch.setattr(Transaction, "commit", commit)
    return commits


def test_a_label_moves_in_one_write_retried_over_a_concurrent_change(
    client: TestClient, registry: Registry, monkeypatch
):
    assert create_model(client).status_code == 201
    r = add_version(client, 1, "stable")
    assert r.status_code == 201, r.text
    commits = interfere(monkeypatch, registry, times=1)
    r = add_version(client, 2, "stable")
    assert r.status_code == 201, r.text
    assert len(commits) == 2  # the first lost to the other writer, then re-read
    # the other writer's label is kept, and "stable" is on version 2 only
    assert labels(registry) == {1: ["x1"], 2: ["stable"]}

    r = client.put(
        "/v1/models/m1/versions/1/labels", json={"labels": ["stable"]}, headers=auth("admin")
    )
    assert r.status_code == 200 and r.json()["labels"] == ["stable"]
    assert labels(registry) == {1: ["stable"], 2: []}


def test_a_label_move_that_keeps_losing_is_a_409_and_writes_nothing(
    client: TestClient, registry: Registry, monkeypatch
):
    assert create_model(client).status_code == 201
    r = add_version(client, 1, "stable")
    assert r.status_code == 201, r.text
    commits = interfere(monkeypatch, registry, times=10)
    body = problem(add_version(client, 2, "stable"), 409)
    assert "changed since it was read" in body["detail"] and "nothing was written" in body["detail"]
    assert len(commits) == 3
    assert labels(registry) == {1: ["stable", "x1", "x2", "x3"]}  # no version 2, label kept
    # an existing version is still named as such
    monkeypatch.undo()
    again = {"version": 1, "artifact_uri": "file:///models/m1/1"}
    body = problem(client.post("/v1/models/m1/versions", json=again, headers=auth("admin")), 409)
    assert body["detail"] == "model 'm1' already has version 1"
