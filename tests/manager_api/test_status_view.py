"""Status and worker reads come from the manager's cluster view (ZooKeeper watches), and
the API reads its own writes at once."""

from __future__ import annotations

from fastapi.testclient import TestClient

from registry import Registry, layout
from registry.records import Model
from tests.manager_api.conftest import auth
from tests.servers.zk import wait_for


def test_a_write_is_seen_by_the_next_status_read(client: TestClient):
    admin, viewer = auth("admin"), auth("viewer")
    r = client.post("/v1/models", json={"name": "m", "backend": "triton"}, headers=admin)
    assert r.status_code == 201
    status = client.get("/v1/models/m/status", headers=viewer)
    assert status.status_code == 200
    assert status.json()["message"].startswith("no versions")
    client.post("/v1/models/m/versions", json={"artifact_uri": "file:///m"}, headers=admin)
    client.patch("/v1/models/m", json={"replicas": 2}, headers=admin)
    status = client.get("/v1/models/m/status", headers=viewer).json()
    assert [v["version"] for v in status["versions"]] == [1]
    assert status["desired"] == 2
    client.put("/v1/models/m/versions/1/labels", json={"labels": ["stable"]}, headers=admin)
    status = client.get("/v1/models/m/status", headers=viewer).json()
    assert status["versions"][0]["labels"] == ["stable"]
    client.post("/v1/models/m:offline", headers=admin)
    assert client.get("/v1/models/m/status", headers=viewer).json()["message"] == "offline"
    assert client.delete("/v1/models/m", headers=admin).status_code == 204
    assert client.get("/v1/models/m/status", headers=viewer).status_code == 404
    assert client.get("/v1/status", headers=viewer).json() == []


def test_a_cordon_is_seen_by_the_next_worker_read(client: TestClient, sim_workers):
    sim_workers("w1")
    wait_for(
        lambda: client.get("/v1/workers/w1", headers=auth("viewer")).status_code == 200,
        timeout=20,
        what="the worker in the view",
    )
    assert client.post("/v1/workers/w1:cordon", headers=auth("admin")).json()["cordoned"]
    assert client.get("/v1/workers/w1", headers=auth("viewer")).json()["cordoned"]
    assert client.post("/v1/workers/w1:uncordon", headers=auth("admin")).json()["cordoned"] is False


def test_changes_by_others_reach_the_status_through_the_watches(
    client: TestClient, registry: Registry
):
    """A model written straight to ZooKeeper (another manager) shows up without a re-read."""
    registry.create(layout.model("other"), Model(name="other", backend="triton"))
    wait_for(
        lambda: client.get("/v1/models/other/status", headers=auth("viewer")).status_code == 200,
        timeout=20,
        what="the model written by someone else in the status",
    )
    registry.delete(layout.model("other"), recursive=True)
    wait_for(
        lambda: client.get("/v1/models/other/status", headers=auth("viewer")).status_code == 404,
        timeout=20,
        what="the deleted model gone from the status",
    )
