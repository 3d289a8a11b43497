"""What serves a model's plugin next to what is wanted: the manager's API and the CLI tables,
read from the ``/gateways`` records (end to end with two real gateways and a real Triton)."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from manager_api.cli.models import plugin_summary
from registry import Registry, layout
from registry.records import Gateway, GatewayPluginStatus, Model
from tests.gateway.conftest import (
    ADD_ONE,
    gateway_settings,  # noqa: F401 (a fixture that add_one_gateway uses)
)
from tests.gateway.test_plugins import BROKEN_PLUGIN, CSV_PLUGIN, publish
from tests.manager_api.conftest import auth
from tests.manager_api.test_cli import (  # noqa: F401 (fixtures: the CLI tests' manager, gateways)
    add_one_gateway,
    live,
    mg,
)
from tests.servers.zk import wait_for

GATEWAYS = ("gw-1", "gw-2")


def reported(registry: Registry) -> dict[str, GatewayPluginStatus | None]:
    """What each gateway's own record says about the plugin of ADD_ONE."""
    records = registry.read_children(layout.GATEWAYS, Gateway)
    return {gid: records[gid].plugins.get(ADD_ONE) if gid in records else None for gid in GATEWAYS}


def row_of(table: str, first: str) -> str:
    rows = [line for line in table.splitlines() if line.split()[:1] == [first]]
    assert len(rows) == 1, table
    return rows[0]


def test_a_version_that_fails_to_load_shows_next_to_the_one_still_serving(
    mg,  # noqa: F811 (the fixture imported above)
    add_one_gateway,  # noqa: F811 (the fixture imported above)
    registry: Registry,
    tmp_path: Path,
):
    publish(registry, tmp_path, "csv", "1", CSV_PLUGIN)
    publish(registry, tmp_path, "csv", "2", BROKEN_PLUGIN)
    gateways = [add_one_gateway(gateway_id=gid) for gid in GATEWAYS]
    mg("models", "update", ADD_ONE, "--plugin", "csv@1", "--plugin-config", '{"tag": "v1"}')
    wait_for(
        lambda: all(s and s.serving == "csv@1" for s in reported(registry).values()),
        what="csv@1 serving on both gateways",
    )
    assert row_of(mg("models", "list").stdout, ADD_ONE).endswith("  csv@1")

    mg("models", "update", ADD_ONE, "--plugin", "csv@2")
    wait_for(
        lambda: all(s and s.error for s in reported(registry).values()),
        what="the load error of csv@2 in both gateway records",
    )
    errors = {s.error for s in reported(registry).values() if s}
    assert len(errors) == 1
    error = errors.pop()
    assert error is not None and "csv@2 failed to load: RuntimeError: weights file missing" in error
    # every gateway still answers with csv@1
    for gateway in gateways:
        call = ("infer", ADD_ONE, "--gateway", gateway.address, "--content-type", "text/csv")
        assert mg(*call, "--data", "1,2").stdout.strip() == "v1:2,3"

    # the REST API: wanted, and per gateway what serves and why not the wanted one
    per_gateway = {gid: {"serving": "csv@1", "error": error} for gid in GATEWAYS}
    model = json.loads(mg("models", "get", ADD_ONE, "--json").stdout)
    assert model["plugin"] == "csv@2" and model["plugin_serving"] == per_gateway
    status = json.loads(mg("models", "status", ADD_ONE, "--json").stdout)
    assert status["plugin"] == "csv@2" and status["plugin_serving"] == per_gateway
    everything = json.loads(mg("models", "status", "--json").stdout)
    assert [(s["plugin"], s["plugin_serving"]) for s in everything] == [("csv@2", per_gateway)]

    # the CLI tables
    summary = "csv@2 (serving 1 on 2/2 gateways: load failed)"
    listed = mg("models", "list").stdout
    assert listed.splitlines()[0].split()[-1] == "PLUGIN"
    assert row_of(listed, ADD_ONE).endswith(f"  {summary}")
    assert summary in row_of(mg("models", "status").stdout, ADD_ONE)
    for command in ("get", "status"):
        shown = mg("models", command, ADD_ONE).stdout
        assert row_of(shown, "plugin").split(maxsplit=1) == ["plugin", summary]
        header = " ".join(row_of(shown, "GATEWAY").split())
        assert header == "GATEWAY PLUGIN SERVING PLUGIN LOAD ERROR"
        for gid in GATEWAYS:
            assert row_of(shown, gid).split(maxsplit=2) == [gid, "csv@1", error]

    # back to a version that loads: nothing apart any more
    mg("models", "update", ADD_ONE, "--plugin", "csv@1")
    wait_for(
        lambda: all(
            s and s.serving == "csv@1" and not s.error for s in reported(registry).values()
        ),
        what="csv@1 reloaded without an error on both gateways",
    )
    assert row_of(mg("models", "list").stdout, ADD_ONE).endswith("  csv@1")


def test_every_gateway_is_listed_while_a_plugin_is_wanted(client: TestClient, registry: Registry):
    registry.put(layout.model("digits"), Model(name="digits", backend="triton", plugin="d@2"))
    registry.put(layout.model("plain"), Model(name="plain", backend="triton"))
    failed = GatewayPluginStatus(serving="d@1", error="plugin d@2 failed to load: ValueError: x")
    for gid, plugins in (("gw-a", {"digits": failed}), ("gw-b", {})):
        record = Gateway(gateway_id=gid, address="10.0.0.7:8500", version="0.1.0", plugins=plugins)
        registry.register_ephemeral(layout.gateway(gid), record)

    expected = {"gw-a": failed.model_dump(), "gw-b": {"serving": None, "error": None}}
    models = client.get("/v1/models", headers=auth("viewer")).json()
    assert {m["name"]: m["plugin_serving"] for m in models} == {"digits": expected, "plain": {}}
    assert client.get("/v1/models/digits", headers=auth("viewer")).json()["plugin_serving"] == (
        expected
    )
    # NOTE: the status reads the manager's view, which takes in a record written behind the
    # API's back a moment later
    status = wait_for(
        lambda: (
            (r := client.get("/v1/models/digits/status", headers=auth("viewer"))).is_success
            and r.json()
        ),
        what="the view to show the model",
    )
    assert (status["plugin"], status["plugin_serving"]) == ("d@2", expected)


def test_plugin_summary_names_what_serves_where_it_is_not_the_wanted_version():
    ok = {"serving": "digits@1.0.2", "error": None}
    failed = {"serving": "digits@1.0.1", "error": "plugin digits@1.0.2 failed to load: ..."}
    assert plugin_summary(None, {}) is None
    assert plugin_summary("digits@1.0.2", {}) == "digits@1.0.2"
    assert plugin_summary("digits@1.0.2", {"a": ok, "b": ok}) == "digits@1.0.2"
    assert plugin_summary("digits@1.0.2", {"a": failed, "b": ok}) == (
        "digits@1.0.2 (serving 1.0.1 on 1/2 gateways: load failed)"
    )
    assert plugin_summary("digits@1.0.2", {"a": {"serving": None, "error": None}, "b": failed}) == (
        "digits@1.0.2 (not serving on 1/2 gateways: loading; "
        "serving 1.0.1 on 1/2 gateways: load failed)"
    )
    assert plugin_summary("digits@1.0.2", {"a": {"serving": "other@3", "error": None}}) == (
        "digits@1.0.2 (serving other@3 on 1/1 gateways: loading)"
    )
    assert (
        plugin_summary(None, {"a": ok}) == "- (serving digits@1.0.2 on 1/1 gateways: being removed)"
    )
