"""A model's response cache and shadow traffic through the REST API (the CLI: test_cli.py)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from registry import Registry, layout
from registry.records import Model, ResponseCache, Shadow, Tolerance
from tests.manager_api.conftest import auth
from tests.manager_api.test_api import create_model, problem


def stored(registry: Registry, name: str = "m1") -> Model:
    return registry.get(layout.model(name), Model)[0]


def test_create_with_a_cache_and_a_shadow(client: TestClient, registry: Registry):
    r = create_model(
        client,
        cache={"ttl_s": 30},
        shadow={"target": 2, "percent": 10, "tolerance": {"absolute": 0.01}},
    )
    assert r.status_code == 201, r.text
    assert r.json()["cache"] == {"ttl_s": 30.0, "max_entries": 1000}
    assert r.json()["shadow"] == {
        "target": 2, "percent": 10.0, "tolerance": {"absolute": 0.01, "relative": 0.0}
    }  # fmt: skip
    model = stored(registry)
    assert model.cache == ResponseCache(ttl_s=30)
    assert model.shadow == Shadow(target=2, percent=10, tolerance=Tolerance(absolute=0.01))


def test_update_sets_and_clears_them(client: TestClient, registry: Registry):
    assert create_model(client).status_code == 201
    assert stored(registry).cache is None and stored(registry).shadow is None
    r = client.patch(
        "/v1/models/m1",
        json={"cache": {"ttl_s": 5, "max_entries": 10}, "shadow": {"target": "m2", "percent": 50}},
        headers=auth("operator"),
    )
    assert r.status_code == 200, r.text
    assert stored(registry).cache == ResponseCache(ttl_s=5, max_entries=10)
    assert stored(registry).shadow == Shadow(target="m2", percent=50)
    # another field alone keeps them
    client.patch("/v1/models/m1", json={"replicas": 2}, headers=auth("operator"))
    assert stored(registry).cache is not None and stored(registry).shadow is not None
    r = client.patch("/v1/models/m1", json={"cache": None}, headers=auth("operator"))
    assert r.json()["cache"] is None and stored(registry).cache is None
    assert stored(registry).shadow is not None
    client.patch("/v1/models/m1", json={"shadow": None}, headers=auth("operator"))
    assert stored(registry).shadow is None


def test_bad_values_are_refused_with_the_field_named(client: TestClient, registry: Registry):
    cases = [
        ({"cache": {"ttl_s": 0}}, "cache.ttl_s"),
        ({"cache": {"ttl_s": 5, "max_entries": 0}}, "cache.max_entries"),
        ({"cache": {"ttl_s": 5, "size": 3}}, "cache.size"),
        ({"shadow": {"target": 2, "percent": 101}}, "shadow.percent"),
        ({"shadow": {"target": 2, "percent": 0}}, "shadow.percent"),
        ({"shadow": {"target": "Not A Name", "percent": 5}}, "shadow.target"),
        ({"shadow": {"target": 2, "percent": 5, "tolerance": {"absolute": -1}}},
         "shadow.tolerance.absolute"),
        ({"shadow": {"target": 2, "percent": 5, "tolerance": {"abs": 1}}},
         "shadow.tolerance.abs"),
    ]  # fmt: skip
    for fields, where in cases:
        body = problem(create_model(client, **fields), 422)
        assert where in json.dumps(body), (fields, body)
    assert not registry.exists(layout.model("m1"))
    body = problem(create_model(client, shadow={"target": "m1", "percent": 5}), 422)
    assert "the model itself" in body["detail"]

    assert create_model(client).status_code == 201
    r = client.patch(
        "/v1/models/m1", json={"shadow": {"target": "m1", "percent": 5}}, headers=auth("admin")
    )
    assert "the model itself" in problem(r, 422)["detail"]
    assert stored(registry).shadow is None


def test_the_record_reads_digits_as_a_version_and_refuses_itself():
    assert Model(name="m1", backend="triton", shadow={"target": "2", "percent": 5}).shadow == (
        Shadow(target=2, percent=5)
    )
    with pytest.raises(ValidationError, match="the model itself"):
        Model(name="m1", backend="triton", shadow={"target": "m1", "percent": 5})
