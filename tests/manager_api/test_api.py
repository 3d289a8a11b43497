"""The REST API against a real ZooKeeper (TestClient runs the real app: auth, handlers)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from manager_api.app import create_app
from registry import Registry, layout
from registry.records import (
    Assignment,
    Model,
    OutOfMemory,
    Scale,
    Service,
    Usage,
    WorkerSpec,
)
from tests.manager_api.conftest import auth, settings_for, token_store
from tests.servers.zk import wait_for

PROBLEM = "application/problem+json"


def problem(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"], body
    return body


def plugin_zip(name="digits", version="1.0.0", manifest: str | None = None, **files) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        if manifest is None:
            manifest = (
                f'name = "{name}"\nversion = "{version}"\nentrypoint = "digits_plugin:Digits"\n'
            )
        if manifest:
            z.writestr("plugin.toml", manifest)
        z.writestr("digits_plugin.py", "class Digits: pass\n")
        for path, content in files.items():
            z.writestr(path, content)
    return buf.getvalue()


def create_model(client: TestClient, name="m1", group="ads", role="admin", **kw):
    body = {"name": name, "backend": "triton", "group": group, **kw}
    return client.post("/v1/models", json=body, headers=auth(role))


def test_model_lifecycle(client: TestClient, registry: Registry):
    r = create_model(client, replicas=2, constraints={"gpu": "true"})
    assert r.status_code == 201, r.text
    assert r.json()["replicas"] == 2
    problem(create_model(client), 409)
    stored, _ = registry.get(layout.model("m1"), Model)
    assert stored.constraints == {"gpu": "true"} and stored.group == "ads"

    r = client.get("/v1/models/m1", headers=auth("viewer"))
    etag = r.headers["etag"]
    r = client.patch("/v1/models/m1", json={"replicas": 3}, headers=auth("operator"))
    assert r.json()["replicas"] == 3
    # the ETag read before the PATCH is stale now: compare-and-set refuses
    stale = client.patch(
        "/v1/models/m1", json={"replicas": 1}, headers={**auth("admin"), "If-Match": etag}
    )
    assert "changed since it was read" in problem(stale, 409)["detail"]

    v1 = client.post(
        "/v1/models/m1/versions",
        json={"artifact_uri": "file:///models/m1/1", "labels": ["stable"]},
        headers=auth("operator"),
    )
    assert v1.status_code == 201 and v1.json()["version"] == 1
    v2 = client.post(
        "/v1/models/m1/versions",
        json={"artifact_uri": "s3://bucket/m1/2", "labels": ["stable"]},
        headers=auth("operator"),
    )
    assert v2.json()["version"] == 2
    versions = client.get("/v1/models/m1/versions", headers=auth("viewer")).json()
    # a label names at most one version: "stable" moved to v2
    assert [(v["version"], v["labels"]) for v in versions] == [(1, []), (2, ["stable"])]
    dup = client.post(
        "/v1/models/m1/versions",
        json={"version": 2, "artifact_uri": "file:///x"},
        headers=auth("admin"),
    )
    assert "already has version 2" in problem(dup, 409)["detail"]

    r = client.put(
        "/v1/models/m1/versions/1/labels", json={"labels": ["canary"]}, headers=auth("admin")
    )
    assert r.json()["labels"] == ["canary"]

    bad_sum = client.put(
        "/v1/models/m1/traffic", json={"weights": {"1": 50, "2": 10}}, headers=auth("admin")
    )
    assert "sum to 100" in problem(bad_sum, 422)["detail"]
    unknown = client.put(
        "/v1/models/m1/traffic", json={"weights": {"9": 100}}, headers=auth("admin")
    )
    assert "no version(s) [9]" in problem(unknown, 422)["detail"]
    ok = client.put(
        "/v1/models/m1/traffic", json={"weights": {"1": 90, "2": 10}}, headers=auth("operator")
    )
    assert ok.json()["traffic"] == {"1": 90, "2": 10}
    busy = client.delete("/v1/models/m1/versions/2", headers=auth("admin"))
    assert "10% of the traffic" in problem(busy, 409)["detail"]

    assert client.post("/v1/models/m1:offline", headers=auth("operator")).json()["state"] == (
        "offline"
    )
    assert registry.get(layout.model("m1"), Model)[0].state == "offline"
    assert client.post("/v1/models/m1:online", headers=auth("operator")).json()["state"] == (
        "online"
    )

    assert client.delete("/v1/models/m1", headers=auth("operator")).status_code == 204
    problem(client.get("/v1/models/m1", headers=auth("viewer")), 404)
    assert not registry.exists(layout.model("m1"))


def test_model_references_are_checked(client: TestClient):
    body = problem(create_model(client, group="nope"), 422)
    assert "group 'nope' does not exist" in body["detail"]
    body = problem(create_model(client, plugin="ghost@1.0"), 422)
    assert "plugin 'ghost@1.0' is not uploaded" in body["detail"]


def test_version_uri_allow_list(client: TestClient):
    assert create_model(client).status_code == 201
    for uri, needle in [
        ("ftp://host/x", "scheme 'ftp'"),
        ("relative/path", "scheme '(none)'"),
        ("file://relative", "absolute path"),
        ("http:///nohost", "has no host"),
        ("http://h/a b", "spaces or control"),
    ]:
        r = client.post("/v1/models/m1/versions", json={"artifact_uri": uri}, headers=auth("admin"))
        assert needle in problem(r, 422)["detail"], uri


def test_upload_version_goes_to_blob_store(client: TestClient, registry: Registry):
    assert create_model(client).status_code == 201
    archive = b"\x1f\x8b fake tarball" * 100
    r = client.post(
        "/v1/models/m1/versions:upload",
        files={"file": ("m1.tar.gz", archive, "application/gzip")},
        data={"labels": "stable"},
        headers=auth("operator"),
    )
    assert r.status_code == 201, r.text
    body = r.json()
    sha = hashlib.sha256(archive).hexdigest()
    assert body["sha256"] == sha and body["labels"] == ["stable"]
    assert body["artifact_uri"] == f"http://testserver/v1/blobs/{sha}"
    blob = client.get(f"/v1/blobs/{sha}", headers=auth("internal"))
    assert blob.status_code == 200 and blob.content == archive
    bad = client.post(
        "/v1/models/m1/versions:upload",
        files={"file": ("m1.exe", b"x", "application/octet-stream")},
        headers=auth("operator"),
    )
    assert ".tar.gz" in problem(bad, 422)["detail"]


def test_plugins_upload_list_delete(client: TestClient, registry: Registry):
    data = plugin_zip()
    r = client.post(
        "/v1/plugins", files={"file": ("p.zip", data, "application/zip")}, headers=auth("operator")
    )
    assert r.status_code == 201, r.text
    plugin = r.json()
    sha = hashlib.sha256(data).hexdigest()
    assert plugin["sha256"] == sha and plugin["entrypoint"] == "digits_plugin:Digits"
    assert plugin["blob_url"].endswith(f"/v1/blobs/{sha}")
    blob = client.get(f"/v1/blobs/{sha}", headers=auth("internal"))
    assert blob.content == data
    # same content again is idempotent; different content under the same version is not
    again = client.post("/v1/plugins", files={"file": ("p.zip", data)}, headers=auth("admin"))
    assert again.status_code in (200, 201)
    other = plugin_zip(**{"extra.py": "x = 1\n"})
    assert (
        "bump the version"
        in problem(
            client.post("/v1/plugins", files={"file": ("p.zip", other)}, headers=auth("admin")), 409
        )["detail"]
    )

    assert create_model(client, plugin="digits@1.0.0").status_code == 201
    listed = client.get("/v1/plugins", headers=auth("viewer")).json()
    assert [(p["name"], p["version"], p["used_by"]) for p in listed] == [
        ("digits", "1.0.0", ["m1"])
    ]
    used = client.delete("/v1/plugins/digits/1.0.0", headers=auth("admin"))
    assert "used by model(s) m1" in problem(used, 409)["detail"]
    cleared = client.patch("/v1/models/m1", json={"plugin": ""}, headers=auth("admin"))
    assert cleared.status_code == 200 and cleared.json()["plugin"] is None
    again = client.patch("/v1/models/m1", json={"plugin": "digits@1.0.0"}, headers=auth("admin"))
    assert again.json()["plugin"] == "digits@1.0.0"
    client.patch("/v1/models/m1", json={"clear_plugin": True}, headers=auth("admin"))
    assert client.delete("/v1/plugins/digits/1.0.0", headers=auth("admin")).status_code == 204
    problem(client.get("/v1/plugins/digits", headers=auth("viewer")), 404)
    problem(client.get(f"/v1/blobs/{sha}", headers=auth("internal")), 404)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"not a zip", "not a zip"),
        (plugin_zip(manifest=""), "no plugin.toml"),
        (plugin_zip(manifest='name = "x"\nversion = "1"\nentrypoint = "nope"\n'), "entrypoint"),
        (
            plugin_zip(manifest='name = "x"\nversion = "1"\nentrypoint = "missing:Cls"\n'),
            "missing.py",
        ),
        (
            plugin_zip(
                manifest='name = "x"\nversion = "1"\nentrypoint = "digits_plugin:D"\n'
                'executor = "gpu"\n'
            ),
            "executor",
        ),
        (plugin_zip(**{"../evil.py": "x"}), "escapes"),
    ],
)
def test_plugin_validation(client: TestClient, content: bytes, needle: str):
    r = client.post("/v1/plugins", files={"file": ("p.zip", content)}, headers=auth("admin"))
    assert needle in problem(r, 422)["detail"]


def test_plugin_size_limit(zookeeper, zk_root, registry: Registry, tmp_path: Path):
    settings = settings_for(zookeeper, zk_root, tmp_path, max_plugin_mb=1)
    app = create_app(settings, registry, tokens=token_store(), start_reconciler=False)
    big = plugin_zip(**{"weights.bin": bytes(range(256)) * 8192})  # ~2 MiB stored
    with TestClient(app) as client:
        r = client.post("/v1/plugins", files={"file": ("p.zip", big)}, headers=auth("admin"))
        assert "limit of 1 MiB" in problem(r, 413)["detail"]


def test_groups_and_services(client: TestClient, registry: Registry):
    assert (
        client.post("/v1/groups", json={"name": "vision"}, headers=auth("admin")).status_code == 201
    )
    problem(client.post("/v1/groups", json={"name": "vision"}, headers=auth("admin")), 409)
    names = [g["name"] for g in client.get("/v1/groups", headers=auth("viewer")).json()]
    assert {"default", "ads", "search", "vision"} <= set(names)

    svc = {"name": "ocr", "urls": ["http://127.0.0.1:9/ocr"], "timeout_s": 3, "group": "ads"}
    assert client.post("/v1/services", json=svc, headers=auth("operator")).status_code == 201
    assert client.get("/v1/services/ocr", headers=auth("viewer")).json()["timeout_s"] == 3
    problem(client.post("/v1/services", json=svc, headers=auth("admin")), 409)
    bad = {**svc, "name": "bad", "urls": ["ftp://x"]}
    problem(client.post("/v1/services", json=bad, headers=auth("admin")), 422)
    assert client.get("/v1/services/ocr", headers=auth("viewer")).json()["health_path"] is None
    probed = {**svc, "name": "ocr-probed", "health_path": "/healthz?deep=1"}
    assert client.post("/v1/services", json=probed, headers=auth("operator")).status_code == 201
    stored = registry.read(layout.service("ocr-probed"), Service)
    assert stored is not None and stored.health_path == "/healthz?deep=1"
    unrooted = {**svc, "name": "bad", "health_path": "healthz"}
    refused = client.post("/v1/services", json=unrooted, headers=auth("admin"))
    assert "health_path" in problem(refused, 422)["detail"]

    assert create_model(client, group="vision").status_code == 201
    busy = client.delete("/v1/groups/vision", headers=auth("admin"))
    assert "still has models ['m1']" in problem(busy, 409)["detail"]
    client.delete("/v1/models/m1", headers=auth("admin"))
    assert client.delete("/v1/groups/vision", headers=auth("admin")).status_code == 204
    assert client.delete("/v1/services/ocr", headers=auth("operator")).status_code == 204
    problem(client.get("/v1/services/ocr", headers=auth("viewer")), 404)


def test_workers_admin(client: TestClient, registry: Registry, sim_workers):
    sim_workers(
        "w1:9200",
        labels={"gpu": "true"},
        capacity_memory_mb=1000,
        capacity_cpu=4.0,
        usage=Usage(cpu=1.0, memory_mb=600.0),
        model_usage={"m@1": Usage(cpu=0.5, memory_mb=200.0)},
        ooms={"big@2": OutOfMemory(at=5.0, memory_mb=990.0, capacity_mb=1000)},
    )
    registry.put(
        layout.assignment("gone", "m", 1),
        Assignment(model="m", version=1, backend="triton", artifact_uri="file:///m"),
    )

    def listed() -> dict[str, dict] | None:
        """The workers, once the manager's view shows the assignment written behind its back."""
        found = {
            w["worker_id"]: w for w in client.get("/v1/workers", headers=auth("viewer")).json()
        }
        return found if found.get("gone", {}).get("assignments") else None

    workers = wait_for(listed, what="the view to show gone's assignment")
    assert workers["w1:9200"]["registered"] and workers["w1:9200"]["labels"] == {"gpu": "true"}
    assert not workers["gone"]["registered"] and workers["gone"]["assignments"] == ["m@1"]
    w1 = workers["w1:9200"]
    assert w1["usage"] == {"cpu": 1.0, "memory_mb": 600.0} and w1["capacity_cpu"] == 4.0
    assert w1["headroom"] == pytest.approx(0.4)  # memory: 60 % used, CPU: 25 %
    assert w1["model_usage"] == {"m@1": {"cpu": 0.5, "memory_mb": 200.0}}
    assert w1["ooms"] == {"big@2": {"at": 5.0, "memory_mb": 990.0, "capacity_mb": 1000.0}}
    assert workers["gone"]["headroom"] is None and workers["gone"]["usage"] is None

    r = client.post("/v1/workers/w1:9200:cordon", headers=auth("admin"))
    assert r.status_code == 200, r.text
    assert r.json()["cordoned"] and not r.json()["draining"]
    assert registry.get(layout.assignments("w1:9200"), WorkerSpec)[0].cordoned
    r = client.post("/v1/workers/w1:9200:drain", headers=auth("admin"))
    assert r.json()["draining"]
    r = client.post("/v1/workers/w1:9200:uncordon", headers=auth("admin"))
    assert not r.json()["cordoned"] and not r.json()["draining"]
    problem(client.post("/v1/workers/nobody:cordon", headers=auth("admin")), 404)

    alive = client.delete("/v1/workers/w1:9200", headers=auth("admin"))
    assert "still registered" in problem(alive, 409)["detail"]
    assert client.delete("/v1/workers/gone", headers=auth("admin")).status_code == 204
    assert not registry.exists(layout.assignments("gone"))
    assert client.delete("/v1/workers/w1:9200?force=true", headers=auth("admin")).status_code == 204
    assert not registry.exists(layout.worker("w1:9200"))


def test_status_explains_shortfall(client: TestClient, sim_workers):
    sim_workers("t1", backend="tfserving")
    create_model(client, backend="tfserving", replicas=3, constraints={"gpu": "true"})
    client.post("/v1/models/m1/versions", json={"artifact_uri": "file:///m"}, headers=auth("admin"))
    status = client.get("/v1/models/m1/status", headers=auth("viewer")).json()
    assert status["desired"] == 3 and status["ready"] == 0
    assert status["versions"][0]["message"] == (
        "0/3 placed: no tfserving worker with label gpu=true"
    )
    all_status = client.get("/v1/status", headers=auth("viewer")).json()
    assert [s["name"] for s in all_status] == ["m1"]


def test_autoscale_limits_and_pinned_are_set_shown_and_turned_off(
    client: TestClient, registry: Registry
):
    autoscale = {"min_replicas": 0, "max_replicas": 3, "target_in_flight": 4, "idle_seconds": 60}
    limits = {"max_concurrency": 8, "rate_limit": 100, "burst": 20}
    r = create_model(client, autoscale=autoscale, limits=limits, pinned=True)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["autoscale"] == {**autoscale, "target_calls_per_s": None}
    assert out["limits"] == limits and out["pinned"] is True
    stored = registry.get(layout.model("m1"), Model)[0]
    assert stored.autoscale is not None and stored.autoscale.max_replicas == 3
    assert stored.limits is not None and stored.limits.burst == 20 and stored.pinned

    # PATCH replaces a setting as a whole; null turns it off; omitted fields stay
    patch = {"autoscale": {"max_replicas": 2, "target_calls_per_s": 50}, "pinned": False}
    out = client.patch("/v1/models/m1", json=patch, headers=auth("admin")).json()
    assert out["autoscale"]["max_replicas"] == 2 and out["autoscale"]["min_replicas"] == 1
    assert out["autoscale"]["target_in_flight"] is None
    assert out["limits"] == limits and out["pinned"] is False
    out = client.patch("/v1/models/m1", json={"limits": None}, headers=auth("admin")).json()
    assert out["limits"] is None and out["autoscale"] is not None
    assert registry.get(layout.model("m1"), Model)[0].limits is None


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"autoscale": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas 3 is above"),
        (
            {"autoscale": {"target_in_flight": 1, "target_calls_per_s": 1}},
            "set target_in_flight or target_calls_per_s, not both",
        ),
        ({"autoscale": {"max_replicas": 3, "replicas": 2}}, "autoscale.replicas"),
        ({"autoscale": {"idle_seconds": 0}}, "autoscale.idle_seconds"),
        ({"limits": {"rate_limit": -1}}, "limits.rate_limit"),
        ({"limits": {"max_concurrency": 0}}, "limits.max_concurrency"),
        ({"pinned": "often"}, "pinned"),
    ],
)
def test_autoscale_and_limits_validation(client: TestClient, body: dict, needle: str):
    detail = problem(create_model(client, **body), 422)["detail"]
    assert needle in detail
    assert client.get("/v1/models/m1", headers=auth("viewer")).status_code == 404
    assert create_model(client).status_code == 201
    detail = problem(client.patch("/v1/models/m1", json=body, headers=auth("admin")), 422)
    assert needle in detail["detail"]
    assert client.get("/v1/models/m1", headers=auth("viewer")).json()["autoscale"] is None


def test_status_shows_the_replicas_wanted_and_why(client: TestClient, registry: Registry):
    autoscale = {"min_replicas": 2, "max_replicas": 4, "target_in_flight": 2}
    create_model(client, replicas=1, autoscale=autoscale)
    client.post("/v1/models/m1/versions", json={"artifact_uri": "file:///m"}, headers=auth("admin"))
    status = client.get("/v1/models/m1/status", headers=auth("viewer")).json()
    # before the leader chose: replicas within the bounds
    assert status["desired"] == 2 and status["versions"][0]["desired"] == 2
    assert status["scale"] is None and status["load"] is None
    assert status["autoscale"]["max_replicas"] == 4
    registry.put(
        layout.scale("m1"),
        Scale(model="m1", replicas=3, reason="5.2 in flight > 2 per replica x 2", changed=100.0),
    )
    status = wait_for(
        lambda: (
            s
            if (s := client.get("/v1/models/m1/status", headers=auth("viewer")).json())["scale"]
            else None
        ),
        timeout=20,
        what="the leader's choice in the status",
    )
    assert status["desired"] == 3 and status["replicas"] == 1
    assert status["scale"]["reason"] == "5.2 in flight > 2 per replica x 2"
    assert status["scale"]["changed"] == 100.0
    assert "0/3 placed" in status["versions"][0]["message"]
    registry.put(layout.scale("m1"), Scale(model="m1", replicas=0, reason="idle for 300 s"))
    status = wait_for(
        lambda: (
            s
            if (s := client.get("/v1/models/m1/status", headers=auth("viewer")).json())["desired"]
            == 0
            else None
        ),
        timeout=20,
        what="the model scaled to zero in the status",
    )
    assert status["versions"][0]["message"] == "scaled to zero (loads on a call)"
    assert status["scale"]["reason"] == "idle for 300 s"


def test_gateways_list(client: TestClient, registry: Registry):
    from registry.records import Gateway, GatewayPluginStatus

    registry.register_ephemeral(
        layout.gateway("gw1"),
        Gateway(
            gateway_id="gw1",
            address="127.0.0.1:8500",
            version="0.1.0",
            plugins={"digits": GatewayPluginStatus(serving="1.0.0", error="boom")},
        ),
    )
    gws = client.get("/v1/gateways", headers=auth("viewer")).json()
    assert gws[0]["gateway_id"] == "gw1" and gws[0]["plugins"]["digits"]["error"] == "boom"


def test_audit_log_records_who_what_when(client: TestClient, settings):
    create_model(client, role="operator")
    client.post("/v1/models", json={"name": "x", "backend": "triton"}, headers=auth("viewer"))
    lines = [json.loads(line) for line in settings.audit_log.read_text().splitlines()]
    assert lines[0]["who"] == "ads-ops" and lines[0]["action"] == "POST /v1/models"
    assert lines[0]["status"] == 201 and lines[0]["time"] > 0
    assert lines[1]["who"] == "watcher" and lines[1]["status"] == 403
    entries = client.get("/v1/audit", headers=auth("admin")).json()
    assert [e["who"] for e in entries] == ["ads-ops", "watcher"]


def test_healthz_and_metrics(client: TestClient):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["zookeeper"] is True
    client.get("/v1/models", headers=auth("viewer"))
    text = client.get("/metrics").text
    assert (
        'modelgate_manager_http_requests_total{method="GET",route="/v1/models",status="200"}'
        in text
    )
    assert client.get("/openapi.json").json()["info"]["title"] == "modelgate manager"
    assert client.get("/docs").status_code == 200


def test_unexpected_errors_are_generic_500(client: TestClient, registry: Registry, monkeypatch):
    def boom(*_a, **_kw):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(registry, "read_children", boom)
    body = problem(client.get("/v1/models", headers=auth("viewer")), 500)
    assert "secret" not in body["detail"]


def test_zookeeper_down_is_503(client: TestClient, registry: Registry, monkeypatch):
    from registry.errors import ZooKeeperUnavailableError

    def down(*_a, **_kw):
        raise ZooKeeperUnavailableError("ZooKeeper at x unavailable")

    monkeypatch.setattr(registry, "read_children", down)
    assert "unavailable" in problem(client.get("/v1/groups", headers=auth("viewer")), 503)["detail"]


def test_oversized_json_body_is_413(client: TestClient, registry: Registry):
    body = {"name": "big", "backend": "triton", "plugin_config": {"blob": "x" * 300_000}}
    assert (
        "over the limit"
        in problem(client.post("/v1/models", json=body, headers=auth("admin")), 413)["detail"]
    )
    assert not registry.exists(layout.model("big"))
