"""Unit tests of gateway/dataplane/plan.py: which versions take the fast path, and that each
routing-table change costs Runtime API commands in proportion to the change only."""

from __future__ import annotations

from gateway.dataplane.plan import FastLimits, Programmer, fast_limits, fast_routes
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
         "keyless": {"policy": "sticky"}, "least": {"policy": "least_request"}, "mixed": {}},
        [("plain", 1, "w1", "10.0.0.1:8001", "kserve"),
         ("plain", 2, "w1", "10.0.0.1:8001", "kserve"),
         ("plugged", 1, "w1", "10.0.0.1:8001", "kserve"),
         ("resting", 1, "w1", "10.0.0.1:8001", "kserve"),
         ("sticky", 1, "w1", "10.0.0.1:8001", "kserve"),
         ("keyless", 1, "w1", "10.0.0.1:8001", "kserve"),
         ("least", 1, "w2", "10.0.0.2:8500", "tfserving"),
         ("mixed", 1, "w1", "10.0.0.1:8001", "kserve"),
         ("mixed", 1, "w2", "10.0.0.2:8500", "tfserving")],
    )  # fmt: skip
    routes = fast_routes(table, resolve)
    assert sorted((r.key, r.policy) for r in routes.values()) == [
        ("k:plain/1", "round_robin"), ("k:plain/2", "round_robin"),
        ("k:sticky/1", "sticky"), ("t:least/1", "least_request"),
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


def test_a_models_limits_are_in_the_limit_maps_while_it_is_on_the_fast_path():
    programmer = Programmer(MAP, slots=2, concurrency_map="c.map", rate_map="r.map")
    routes = [("m", 1, "w1", "10.0.0.1:8001", "kserve"), ("m", 2, "w1", "10.0.0.1:8001", "kserve")]

    def plan(limits: Limits | None) -> list[str]:
        """The map commands, a route's value left out (its instances are not the point
        here)."""
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
    programmer = Programmer(MAP, slots=64)
    fleet = [(f"m{i:02d}", 1, "w1", f"10.0.0.1:{8000 + i}", "kserve") for i in range(50)]
    first = programmer.plan(fast_routes(table_of({}, fleet), resolve))
    assert len(first) == 50 * 4  # addr, ready, health up per instance; a key per model

    grown = [*fleet, ("m07", 1, "w2", "10.0.0.2:9000", "kserve")]
    value = "rr,i_7=10.0.0.1:8007,i_50=10.0.0.2:9000"
    assert programmer.plan(fast_routes(table_of({}, grown), resolve)) == [
        "set server i_50/s addr 10.0.0.2 port 9000",
        "set server i_50/s state ready",
        "set server i_50/s health up",
        f"set map {MAP} k:m07/1 {value}",
    ]
    assert programmer.address_of("i_50") == ("10.0.0.2", 9000)

    shrunk = [r for r in grown if r[0] != "m03"]
    assert programmer.plan(fast_routes(table_of({}, shrunk), resolve)) == [
        f"del map {MAP} k:m03/1",
        "set server i_3/s state maint",
    ]
    assert programmer.plan(fast_routes(table_of({}, shrunk), resolve)) == []

    # the freed slot is reused by the next new instance, after its maintenance was sent
    added = [*shrunk, ("new", 1, "w3", "10.0.0.3:7000", "kserve")]
    assert programmer.plan(fast_routes(table_of({}, added), resolve)) == [
        "set server i_3/s addr 10.0.0.3 port 7000",
        "set server i_3/s state ready",
        "set server i_3/s health up",
        f"add map {MAP} k:new/1 rr,i_3=10.0.0.3:7000",
    ]
    assert programmer.address_of("i_3") == ("10.0.0.3", 7000)
    assert programmer.address_of("python") is None


def test_models_on_one_instance_share_its_backend_however_many_they_are():
    programmer = Programmer(MAP, slots=2)
    fleet = [(f"m{i:04d}", 1, "w1", "10.0.0.1:8001", "kserve") for i in range(1000)]
    commands = programmer.plan(fast_routes(table_of({}, fleet), resolve))
    assert [c for c in commands if "server" in c] == [
        "set server i_0/s addr 10.0.0.1 port 8001",
        "set server i_0/s state ready",
        "set server i_0/s health up",
    ]
    assert len([c for c in commands if c.startswith(f"add map {MAP}")]) == 1000
    # the instance stays while any model uses it, and goes with the last one
    assert programmer.plan(fast_routes(table_of({}, fleet[1:]), resolve)) == [
        f"del map {MAP} k:m0000/1",
    ]
    assert programmer.plan(fast_routes(table_of({}, []), resolve))[-1] == (
        "set server i_0/s state maint"
    )


def test_policy_change_rewrites_the_map_entries_only_and_reset_forgets_everything():
    programmer = Programmer(MAP, slots=2)
    routes = [("m", 1, "w1", "10.0.0.1:8001", "kserve"), ("m", 1, "w2", "h2:8001", "kserve")]
    programmer.plan(fast_routes(table_of({"m": {}}, routes), resolve))
    sticky = {"policy": "sticky", "sticky_header": "X-User"}
    value = "sh=X-User,i_0=10.0.0.1:8001,i_1=h2:8001"
    assert programmer.plan(fast_routes(table_of({"m": sticky}, routes), resolve)) == [
        f"set map {MAP} k:m/1 {value}",
    ]
    least = programmer.plan(fast_routes(table_of({"m": {"policy": "least_request"}}, routes),
                                        resolve))  # fmt: skip
    assert least[0] == f"set map {MAP} k:m/1 lc,i_0=10.0.0.1:8001,i_1=h2:8001"
    programmer.reset()
    again = programmer.plan(fast_routes(table_of({"m": {}}, routes), resolve))
    assert again[-1] == f"add map {MAP} k:m/1 rr,i_0=10.0.0.1:8001,i_1=h2:8001"
    assert len(again) == 2 * 3 + 1


def test_versions_whose_instances_do_not_all_get_a_slot_stay_on_the_python_path():
    programmer = Programmer(MAP, slots=1)
    routes = [("a", 1, "w1", "10.0.0.1:8001", "kserve"), ("a", 1, "w2", "10.0.0.2:8001", "kserve"),
              ("b", 1, "w2", "10.0.0.2:8001", "kserve")]  # fmt: skip
    commands = programmer.plan(fast_routes(table_of({}, routes), resolve))
    # NOTE: a on one of its two instances would send it all the fast-path calls
    assert [c for c in commands if "map" in c] == [f"add map {MAP} k:b/1 rr,i_0=10.0.0.2:8001"]
    assert sum("addr" in c for c in commands) == 1


def test_versions_left_without_slots_are_reported_once_in_one_line(caplog):
    programmer = Programmer(MAP, slots=1)
    fleet = [(f"m{i}", 1, "w1", f"10.0.0.1:{8000 + i}", "kserve") for i in range(8)]
    with caplog.at_level("WARNING", logger="gateway.dataplane"):
        programmer.plan(fast_routes(table_of({}, fleet), resolve))
        programmer.plan(fast_routes(table_of({}, fleet), resolve), {"m3"})  # a change of m3
    (line,) = [r.getMessage() for r in caplog.records if "no free instance slot" in r.getMessage()]
    assert "of 7 more model version(s)" in line and "m1 v1" in line and ", ..." in line
