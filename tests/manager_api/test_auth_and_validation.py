"""The auth matrix (401/403/2xx per role and group) and bad inputs -> 4xx problem bodies."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from manager_api.auth import TokenStore
from tests.manager_api.conftest import auth

ROLES = ("admin", "operator", "viewer", "internal")


@pytest.fixture
def seeded(client: TestClient, sim_workers) -> TestClient:
    sim_workers("w1")
    for name, group in (("ads-model", "ads"), ("search-model", "search")):
        r = client.post(
            "/v1/models",
            json={"name": name, "backend": "triton", "group": group},
            headers=auth("admin"),
        )
        assert r.status_code == 201, r.text
        client.post(
            f"/v1/models/{name}/versions",
            json={"artifact_uri": "file:///m"},
            headers=auth("admin"),
        )
    r = client.post(
        "/v1/services",
        json={"name": "svc-search", "urls": ["http://h/x"], "group": "search"},
        headers=auth("admin"),
    )
    assert r.status_code == 201
    return client


# (method, path, json body, {role: expected status})
OK_READ = {"admin": 200, "operator": 200, "viewer": 200, "internal": 403}
MATRIX = [
    ("GET", "/v1/models", None, OK_READ),
    ("GET", "/v1/models/ads-model", None, OK_READ),
    ("GET", "/v1/models/ads-model/status", None, OK_READ),
    ("GET", "/v1/workers", None, OK_READ),
    ("GET", "/v1/gateways", None, OK_READ),
    ("GET", "/v1/plugins", None, OK_READ),
    ("GET", "/v1/services", None, OK_READ),
    ("GET", "/v1/groups", None, OK_READ),
    (
        "GET",
        "/v1/audit",
        None,
        {"admin": 200, "operator": 403, "viewer": 403, "internal": 403},
    ),
    (
        "POST",
        "/v1/models",
        {"name": "new-ads", "backend": "triton", "group": "ads"},
        {"admin": 201, "operator": 201, "viewer": 403, "internal": 403},
    ),
    (
        "POST",
        "/v1/models",
        {"name": "new-search", "backend": "triton", "group": "search"},
        {"admin": 201, "operator": 403, "viewer": 403, "internal": 403},
    ),
    (
        "POST",
        "/v1/models/ads-model:offline",
        None,
        {"admin": 200, "operator": 200, "viewer": 403, "internal": 403},
    ),
    (
        "POST",
        "/v1/models/search-model:offline",
        None,
        {"admin": 200, "operator": 403, "viewer": 403, "internal": 403},
    ),
    (
        "PATCH",
        "/v1/models/search-model",
        {"replicas": 2},
        {"admin": 200, "operator": 403, "viewer": 403, "internal": 403},
    ),
    (
        "PUT",
        "/v1/models/ads-model/traffic",
        {"weights": {"1": 100}},
        {"admin": 200, "operator": 200, "viewer": 403, "internal": 403},
    ),
    (
        "POST",
        "/v1/models/search-model/versions",
        {"artifact_uri": "file:///x"},
        {"admin": 201, "operator": 403, "viewer": 403, "internal": 403},
    ),
    (
        "PATCH",
        "/v1/models/ads-model",
        {"group": "search"},
        {"admin": 200, "operator": 403, "viewer": 403, "internal": 403},
    ),
    (
        "POST",
        "/v1/workers/w1:cordon",
        None,
        {"admin": 200, "operator": 403, "viewer": 403, "internal": 403},
    ),
    (
        "POST",
        "/v1/groups",
        {"name": "fresh"},
        {"admin": 201, "operator": 403, "viewer": 403, "internal": 403},
    ),
    (
        "POST",
        "/v1/services",
        {"name": "svc-ads", "urls": ["http://h/x"], "group": "ads"},
        {"admin": 201, "operator": 201, "viewer": 403, "internal": 403},
    ),
    (
        "DELETE",
        "/v1/services/svc-search",
        None,
        {"admin": 204, "operator": 403, "viewer": 403, "internal": 403},
    ),
    (
        "DELETE",
        "/v1/models/search-model",
        None,
        {"admin": 204, "operator": 403, "viewer": 403, "internal": 403},
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "expected"), MATRIX)
def test_auth_matrix(seeded: TestClient, method, path, body, expected):
    for bad in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic abc"}):
        r = seeded.request(method, path, json=body, headers=bad)
        assert r.status_code == 401, (path, bad, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["www-authenticate"] == "Bearer"
    # each role in its own fresh state: order must not matter, so the failing roles go first
    for role in sorted(ROLES, key=lambda ro: expected[ro] < 300):
        r = seeded.request(method, path, json=body, headers=auth(role))
        assert r.status_code == expected[role], (role, method, path, r.text)
        if r.status_code == 403:
            assert r.json()["title"] == "Forbidden"
            assert role in r.json()["detail"] or "may only change" in r.json()["detail"]
        if expected[role] < 300 and method != "GET":
            break  # the state changed; later roles would see a different world


def test_blobs_readable_by_internal_token_only_when_authenticated(client: TestClient):
    sha = "0" * 64
    assert client.get(f"/v1/blobs/{sha}").status_code == 401
    assert client.get(f"/v1/blobs/{sha}", headers=auth("internal")).status_code == 404


def test_tokens_file(tmp_path):
    path = tmp_path / "tokens.toml"
    path.write_text(
        '[[tokens]]\nname = "a"\nrole = "admin"\ntoken_sha256 = "'
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256("test")
        '"\n'
        '[[tokens]]\nname = "o"\nrole = "operator"\ntoken = "operator-secret"\ngroups = ["ads"]\n'
    )
    store = TokenStore.load(path)
    assert store.authenticate("test").role == "admin"
    op = store.authenticate("operator-secret")
    assert op.name == "o" and op.groups == {"ads"}
    path.write_text('[[tokens]]\nname = "a"\nrole = "god"\ntoken = "12345678"\n')
    with pytest.raises(ValueError, match="invalid tokens file"):
        TokenStore.load(path)
    path.write_text("")
    with pytest.raises(ValueError, match="defines no"):
        TokenStore.load(path)


BAD_INPUTS = [
    ("POST", "/v1/models", {"name": "Bad Name", "backend": "triton"}, 422),
    ("POST", "/v1/models", {"name": "m", "backend": "onnx"}, 422),
    ("POST", "/v1/models", {"name": "m", "backend": "triton", "replicas": 101}, 422),
    ("POST", "/v1/models", {"name": "m", "backend": "triton", "replicas": -1}, 422),
    ("POST", "/v1/models", {"name": "m", "backend": "triton", "plugin": "no-version"}, 422),
    ("POST", "/v1/models", {"name": "m", "backend": "triton", "surprise": 1}, 422),
    ("POST", "/v1/models", {"name": "x" * 64, "backend": "triton"}, 422),
    ("POST", "/v1/models", "not json", 422),
    ("POST", "/v1/models", [], 422),
    ("GET", "/v1/models/UPPER", None, 422),
    ("GET", "/v1/models/missing", None, 404),
    ("PATCH", "/v1/models/missing", {"replicas": 1}, 404),
    ("PATCH", "/v1/models/ads-model", {"replicas": "many"}, 422),
    ("DELETE", "/v1/models/missing", None, 404),
    ("POST", "/v1/models/missing:online", None, 404),
    ("POST", "/v1/models/ads-model/versions", {"artifact_uri": ""}, 422),
    ("POST", "/v1/models/ads-model/versions", {"artifact_uri": "file:///x", "version": 0}, 422),
    ("POST", "/v1/models/ads-model/versions", {"artifact_uri": "file:///x", "sha256": "z"}, 422),
    ("POST", "/v1/models/missing/versions", {"artifact_uri": "file:///x"}, 404),
    ("DELETE", "/v1/models/ads-model/versions/99", None, 404),
    ("DELETE", "/v1/models/ads-model/versions/0", None, 422),
    ("DELETE", "/v1/models/ads-model/versions/abc", None, 422),
    ("PUT", "/v1/models/ads-model/versions/99/labels", {"labels": ["stable"]}, 404),
    ("PUT", "/v1/models/ads-model/versions/1/labels", {"labels": ["Not Ok"]}, 422),
    ("PUT", "/v1/models/ads-model/traffic", {"weights": {"x": 100}}, 422),
    ("PUT", "/v1/models/ads-model/traffic", {"weights": {"1": 101}}, 422),
    ("PUT", "/v1/models/ads-model/traffic", {"weights": {"1": -5, "2": 105}}, 422),
    ("GET", "/v1/models/missing/status", None, 404),
    ("GET", "/v1/workers/nobody", None, 404),
    ("POST", "/v1/workers/nobody:drain", None, 404),
    ("POST", "/v1/workers/bad%20id:drain", None, 422),
    ("DELETE", "/v1/workers/nobody", None, 404),
    ("POST", "/v1/groups", {"name": ""}, 422),
    ("DELETE", "/v1/groups/missing", None, 404),
    ("POST", "/v1/services", {"name": "s", "urls": []}, 422),
    ("POST", "/v1/services", {"name": "s", "urls": ["http://h"], "timeout_s": 0}, 422),
    ("POST", "/v1/services", {"name": "s", "urls": ["http://h"], "group": "nope"}, 422),
    ("GET", "/v1/services/missing", None, 404),
    ("DELETE", "/v1/plugins/missing/1.0", None, 404),
    ("GET", "/v1/plugins/missing", None, 404),
    ("POST", "/v1/plugins", None, 422),
    ("GET", "/v1/blobs/not-a-sha", None, 422),
    ("GET", "/v1/blobs/" + "a" * 64, None, 404),
    ("GET", "/v1/nothing-here", None, 404),
    ("PUT", "/v1/models", None, 405),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), BAD_INPUTS)
def test_bad_inputs_are_4xx_problems(seeded: TestClient, method, path, body, status):
    kwargs = {"content": body} if isinstance(body, str) else {"json": body}
    r = seeded.request(method, path, headers=auth("admin"), **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == status and problem["detail"] and problem["type"].startswith("http")
    if status == 405:
        assert r.headers["allow"] == "GET, POST"  # every method the path has
    # every answer the server gives is one the OpenAPI schema lists for the operation
    documented = seeded.app.openapi()["paths"]
    operation = next(
        (
            item[method.lower()]
            for template, item in documented.items()
            if _matches(template, path) and method.lower() in item
        ),
        None,
    )
    if operation is not None:
        assert str(status) in operation["responses"], (method, path, status)


def test_malformed_multipart_is_a_documented_400(seeded: TestClient):
    r = seeded.post(
        "/v1/models/ads-model/versions:upload",
        content=b"garbage",
        headers={**auth("admin"), "Content-Type": "multipart/form-data; boundary=x"},
    )
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    responses = seeded.app.openapi()["paths"]["/v1/models/{name}/versions:upload"]["post"]
    assert "400" in responses["responses"]


def _matches(template: str, path: str) -> bool:
    """Whether ``path`` is an instance of the OpenAPI path ``template``."""
    parts = re.split(r"\{[^}]+\}", template)
    return re.fullmatch("[^/:]+".join(map(re.escape, parts)), path) is not None


# -- authorization before existence -----------------------------------------------------
# Every state-changing operation, taken from the app's own routes (so a new one cannot be
# missed), on an existing and on a nonexistent resource: a token that may never write gets
# 403 either way, so the answer tells it nothing about which names exist.

PATH_VALUES = {
    "existing": {
        "name": "ads-model",
        "version": "1",
        "worker_id": "w1",
        "sha256": "a" * 64,
    },
    "missing": {
        "name": "ghost-model",
        "version": "99",
        "worker_id": "ghost-worker",
        "sha256": "b" * 64,
    },
}
# A valid body per operation that takes one (a body the schema refuses is a 422 for
# everybody, which reveals nothing; the question here is what a *valid* call reveals).
BODIES: dict[tuple[str, str], dict | None] = {
    ("POST", "/v1/models"): {"name": "ghost-model", "backend": "triton", "group": "ads"},
    ("PATCH", "/v1/models/{name}"): {"replicas": 1},
    ("PUT", "/v1/models/{name}/traffic"): {"weights": {}},
    ("POST", "/v1/models/{name}/versions"): {"artifact_uri": "file:///m"},
    ("PUT", "/v1/models/{name}/versions/{version}/labels"): {"labels": ["stable"]},
    ("POST", "/v1/groups"): {"name": "ghost-group"},
    ("POST", "/v1/services"): {"name": "ghost-svc", "urls": ["http://h/x"], "group": "ads"},
}
# Multipart uploads: the file part is required by the schema.
UPLOADS = {"/v1/models/{name}/versions:upload": "m.tar.gz", "/v1/plugins": "p.zip"}


def _write_operations(app) -> list[tuple[str, str, bool]]:
    """(method, path template, takes a body) of every state-changing operation."""
    return [
        (method.upper(), path, "requestBody" in op)
        for path, item in app.openapi()["paths"].items()
        for method, op in item.items()
        if method.upper() in ("POST", "PUT", "PATCH", "DELETE")
    ]


def _concrete(template: str, which: str) -> str:
    path = template
    for key, value in PATH_VALUES[which].items():
        path = path.replace("{" + key + "}", value)
    # the remaining parameters name groups, services and plugins: same value either way
    # except that "missing" picks a name nobody created
    suffix = "ghost" if which == "missing" else None
    for key, present in (("{name}", "svc-search"), ("{version}", "1.0")):
        path = path.replace(key, suffix or present)
    assert "{" not in path, f"give {template} a value in PATH_VALUES"
    return path


def test_every_write_operation_is_listed(app):
    for method, template, takes_body in _write_operations(app):
        if takes_body and template not in UPLOADS:
            assert (method, template) in BODIES, f"add a valid body for {method} {template}"


@pytest.mark.parametrize("which", ["existing", "missing"])
@pytest.mark.parametrize("role", ["viewer", "internal"])
def test_no_write_reveals_existence_to_tokens_that_cannot_write(seeded, app, role, which):
    checked = 0
    for method, template, _ in _write_operations(app):
        path = _concrete(template, which)
        kwargs: dict = {}
        if template in UPLOADS:
            kwargs["files"] = {"file": (UPLOADS[template], b"\x1f\x8b not really")}
        elif BODIES.get((method, template)) is not None:
            kwargs["json"] = BODIES[(method, template)]
        r = seeded.request(method, path, headers=auth(role), **kwargs)
        assert r.status_code == 403, (role, which, method, path, r.status_code, r.text)
        assert r.json()["title"] == "Forbidden"
        checked += 1
    assert checked >= 20  # every write the API has (20 today), not a handful


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/v1/models/ghost-model", {"replicas": 1}),
        ("DELETE", "/v1/models/ghost-model", None),
        ("POST", "/v1/models/ghost-model:offline", None),
        ("PUT", "/v1/models/ghost-model/traffic", {"weights": {}}),
        ("POST", "/v1/models/ghost-model/versions", {"artifact_uri": "file:///m"}),
        ("DELETE", "/v1/models/ghost-model/versions/1", None),
        ("PUT", "/v1/models/ghost-model/versions/1/labels", {"labels": ["stable"]}),
        ("DELETE", "/v1/services/ghost-svc", None),
    ],
)
def test_writers_learn_that_a_missing_resource_is_missing(seeded, method, path, body):
    for role in ("admin", "operator"):
        r = seeded.request(method, path, json=body, headers=auth(role))
        assert r.status_code == 404, (role, r.text)
        assert "ghost" in r.json()["detail"]


def test_schema_states_the_traffic_weight_bounds_the_server_enforces(app):
    schema = app.openapi()["components"]["schemas"]["TrafficUpdate"]
    (weight,) = schema["properties"]["weights"]["patternProperties"].values()
    assert (weight["minimum"], weight["maximum"]) == (0, 100)
