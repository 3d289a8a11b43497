"""Unit tests of gateway/dataplane/plan.py: which versions take the fast path, and that each
routing-table change costs Runtime API commands in proportion to the change only."""

from __future__ import annotations

from gateway.dataplane.plan import FastLimits, FastRoute, Programmer, fast_limits, fast_routes
from gateway.table import build_table
from registry import layout
from registry.records import Limits, Model, Route

MAP = "/run/routes.map"


def node(path: str, record: Model | Route) -> tuple[str, bytes]:
    return path, record.to_bytes(path)


def table_of(models: dict[str, dict], routes: list[tuple[str, int, str, str, str]]):
    nodes = dict(
        node(layout.model(name), Model(name=name, backend="triton", **fields))
        for name, fields in models.items()
    )
    for model, version, worker, address, protocol in routes:
        nodes.update(
            [
                node(
                    layout.route(model, version, worker),
                    Route(model=model, version=version, worker_id=worker, address=address,
                          protocol=protocol),  # type: ignore[arg-type]
                )
            ]
        )  # fmt: skip
    return build_table(nodes, 1)


def resolve(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def test_only_plain_versions_speaking_one_protocol_take_the_fast_path():
    table = table_of(
        {"plain": {}, "plugged": {"plugin": "p@1"}, "resting": {"state": "offline"},
         "sticky": {"policy": "sticky", "sticky_header": "x-user"},
         "least": {"policy": "least_request"}, "mixed": {}},
        [("plain", 1, "w1", "10.0.0.1:8001", "kserve"),
         ("plain", 2, "w1", "10.0.0.1:8001", "kserve"),
         ("plugged", 1, "w1", "10.0.0.1:8001", "kserve"),
         ("resting", 1, "w1", "10.0.0.1:8001", "kserve"),
         ("sticky", 1, "w1", "10.0.0.1:8001", "kserve"),
         ("least", 1, "w2", "10.0.0.2:8500", "tfserving"),
         ("mixed", 1, "w1", "10.0.0.1:8001", "kserve"),
         ("mixed", 1, "w2", "10.0.0.2:8500", "tfserving")],
    )  # fmt: skip
    routes = fast_routes(table, resolve)
    assert sorted((r.key, r.pool) for r in routes.values()) == [
        ("k:plain/1", "rr"), ("k:plain/2", "rr"), ("t:least/1", "lc"),
    ]  # fmt: skip


def test_limits_haproxy_enforces_keep_the_fast_path_and_the_others_the_python_path():
    assert fast_limits(None) == FastLimits()
    assert fast_limits(Limits(max_concurrency=4)) == FastLimits(4)
    assert fast_limits(Limits(max_concurrency=4, rate_limit=50)) == FastLimits(4, 50)
    assert fast_limits(Limits(rate_limit=50, burst=50)) == FastLimits(None, 50)
    # a one-second window cannot hold these: the Python path's token bucket
    assert fast_limits(Limits(rate_limit=0.5)) is None
    assert fast_limits(Limits(rate_limit=2.5)) is None
    assert fast_limits(Limits(rate_limit=50, burst=100)) is None


def test_a_models_limits_are_in_the_limit_maps_while_it_has_a_slot():
    programmer = Programmer(MAP, slots=2, servers=1, concurrency_map="c.map", rate_map="r.map")
    routes = [("m", 1, "w1", "10.0.0.1:8001", "kserve"), ("m", 2, "w1", "10.0.0.1:8001", "kserve")]

    def plan(limits: Limits | None) -> list[str]:
        """The map commands, a route's slot left out (which slot a model gets is not the
        point here)."""
        table = table_of({"m": {"limits": limits}}, routes)
        commands = [c for c in programmer.plan(fast_routes(table, resolve)) if "map" in c]
        return [c.rsplit(" ", 1)[0] if c.startswith(f"add map {MAP}") else c for c in commands]

    # NOTE: the limits are in place before a key points at a slot, gone after the keys
    assert plan(Limits(max_concurrency=3, rate_limit=10)) == [
        "add map c.map m 3", "add map r.map m 10",
        f"add map {MAP} k:m/1", f"add map {MAP} k:m/2",
    ]  # fmt: skip
    assert plan(Limits(max_concurrency=5)) == ["set map c.map m 5", "del map r.map m"]
    assert plan(Limits(max_concurrency=5)) == []
    *keys, limit = plan(Limits(max_concurrency=5, rate_limit=0.5))  # off the fast path
    assert (sorted(keys), limit) == ([f"del map {MAP} k:m/1", f"del map {MAP} k:m/2"],
                                     "del map c.map m")  # fmt: skip
    assert plan(Limits(rate_limit=7)) == [
        "add map r.map m 7", f"add map {MAP} k:m/1", f"add map {MAP} k:m/2",
    ]  # fmt: skip
    assert plan(None) == ["del map r.map m"]


def test_each_change_costs_commands_for_what_changed_only():
    programmer = Programmer(MAP, slots=64, servers=4)
    fleet = [(f"m{i:02d}", 1, "w1", f"10.0.0.1:{8000 + i}", "kserve") for i in range(50)]
    first = programmer.plan(fast_routes(table_of({}, fleet), resolve))
    assert len(first) == 50 * 4  # addr, ready, health up, map entry per model

    grown = [*fleet, ("m07", 1, "w2", "10.0.0.2:9000", "kserve")]
    assert programmer.plan(fast_routes(table_of({}, grown), resolve)) == [
        "set server rr_7/s2 addr 10.0.0.2 port 9000",
        "set server rr_7/s2 state ready",
        "set server rr_7/s2 health up",
    ]
    assert programmer.address_of("rr_7", "s2") == ("10.0.0.2", 9000)

    shrunk = [r for r in grown if r[0] != "m03"]
    assert programmer.plan(fast_routes(table_of({}, shrunk), resolve)) == [
        f"del map {MAP} k:m03/1",
        "set server rr_3/s1 state maint",
    ]
    assert programmer.plan(fast_routes(table_of({}, shrunk), resolve)) == []

    # the freed slot is reused by the next new model, after its maintenance was sent
    added = [*shrunk, ("new", 1, "w3", "10.0.0.3:7000", "kserve")]
    commands = programmer.plan(fast_routes(table_of({}, added), resolve))
    assert commands == [
        "set server rr_3/s1 addr 10.0.0.3 port 7000",
        "set server rr_3/s1 state ready",
        "set server rr_3/s1 health up",
        f"add map {MAP} k:new/1 rr_3",
    ]
    route = programmer.route_of("rr_3")
    assert isinstance(route, FastRoute) and route.model == "new"


def test_policy_change_moves_the_model_to_the_other_pool_and_reset_forgets_everything():
    programmer = Programmer(MAP, slots=2, servers=2)
    routes = [("m", 1, "w1", "10.0.0.1:8001", "kserve")]
    programmer.plan(fast_routes(table_of({"m": {}}, routes), resolve))
    moved = programmer.plan(
        fast_routes(table_of({"m": {"policy": "least_request"}}, routes), resolve)
    )
    assert moved == [
        "set server lc_0/s1 addr 10.0.0.1 port 8001",
        "set server lc_0/s1 state ready",
        "set server lc_0/s1 health up",
        f"set map {MAP} k:m/1 lc_0",
        "set server rr_0/s1 state maint",
    ]
    programmer.reset()
    again = programmer.plan(fast_routes(table_of({"m": {}}, routes), resolve))
    assert again[-1] == f"add map {MAP} k:m/1 rr_0" and len(again) == 4


def test_versions_beyond_the_slots_stay_on_the_python_path():
    programmer = Programmer(MAP, slots=1, servers=1)
    routes = [("a", 1, "w1", "10.0.0.1:8001", "kserve"), ("a", 1, "w2", "10.0.0.2:8001", "kserve"),
              ("b", 1, "w1", "10.0.0.1:8001", "kserve")]  # fmt: skip
    commands = programmer.plan(fast_routes(table_of({}, routes), resolve))
    assert [c for c in commands if "map" in c] == [f"add map {MAP} k:a/1 rr_0"]
    assert sum("addr" in c for c in commands) == 1  # one server slot per backend here


def test_versions_left_without_a_slot_are_reported_once_in_one_line(caplog):
    programmer = Programmer(MAP, slots=1, servers=1)
    fleet = [(f"m{i}", 1, "w1", f"10.0.0.1:{8000 + i}", "kserve") for i in range(8)]
    with caplog.at_level("WARNING", logger="gateway.dataplane"):
        programmer.plan(fast_routes(table_of({}, fleet), resolve))
        programmer.plan(fast_routes(table_of({}, fleet), resolve), {"m3"})  # a change of m3
    (line,) = [r.getMessage() for r in caplog.records if "no free slot" in r.getMessage()]
    assert "for 7 more model version(s)" in line and "m1 v1" in line and ", ..." in line


def test_a_version_with_more_instances_than_servers_is_reported_once(caplog):
    programmer = Programmer(MAP, slots=1, servers=2)

    def plan(instances: int) -> None:
        fleet = [("a", 1, f"w{i}", f"10.0.0.{i}:8001", "kserve") for i in range(instances)]
        programmer.plan(fast_routes(table_of({}, fleet), resolve), {"a"})

    with caplog.at_level("WARNING", logger="gateway.dataplane"):
        for instances in (3, 4, 5, 2, 3):  # over, still over, ..., fits again, over again
            plan(instances)
    lines = [r.getMessage() for r in caplog.records if "instances" in r.getMessage()]
    assert lines == ["a v1: over 2 instances, the rest are off the fast path"] * 2
