"""The incremental routing table against a full build: random sequences of ZooKeeper events
(through the watcher's own event handler) give, at every publish, the table ``build_table``
makes from the nodes as they are then, and a :class:`TableChange` naming exactly what
differs. Plus the consumers fed by the change: router address state and HAProxy's plan."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gateway.dataplane.plan import Programmer, fast_routes
from gateway.metrics import GatewayMetrics
from gateway.router import Router
from gateway.table import RoutingTable, TableChange, TableState, build_table
from gateway.watcher import WATCHED, TableWatcher
from registry import TreeEvent, layout
from registry.records import Model, ModelVersion, Route, Service

MODELS = ["m0", "s1"]  # NOTE: "s1" is also a service's name: the model wins
VERSIONS = [1, 2]
WORKERS = ["w0", "w1"]
ADDRESSES = ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8500"]
URLS = ["http://svc-a:9/x", "http://svc-b:9/x"]


def resolve(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# -- a ZooKeeper tree that emits what kazoo's TreeCache emits ------------------------------


class Tree:
    """Nodes (path -> data) and the events a TreeCache delivers for each change."""

    def __init__(self) -> None:
        self.nodes: dict[str, bytes] = {}

    def put(self, path: str, data: bytes) -> list[TreeEvent]:
        events = []
        parts = path.strip("/").split("/")
        for depth in range(2, len(parts)):  # parents first, as ZooKeeper needs them
            parent = "/" + "/".join(parts[:depth])
            if parent not in self.nodes:
                self.nodes[parent] = b""
                events.append(TreeEvent("added", parent, b""))
        kind = "updated" if path in self.nodes else "added"
        self.nodes[path] = data
        return [*events, TreeEvent(kind, path, data)]

    def delete(self, path: str, children_first: bool) -> list[TreeEvent]:
        """Remove ``path`` and everything under it (TreeCache reports each node, deepest
        first; ``children_first=False`` reports only ``path``, which must be enough)."""
        gone = sorted((p for p in self.nodes if p == path or p.startswith(path + "/")),
                      key=lambda p: -p.count("/"))  # fmt: skip
        for p in gone:
            del self.nodes[p]
        if not gone:
            return []
        return [TreeEvent("removed", p) for p in (gone if children_first else [path])]


def record_for(path: str, draw: Any) -> bytes:
    """A valid record for ``path``'s kind, drawn by hypothesis."""
    parts = path.strip("/").split("/")
    if parts[0] == "services":
        urls = draw(st.lists(st.sampled_from(URLS), min_size=1, max_size=2, unique=True))
        return Service(name=parts[1], urls=urls).to_bytes(path)
    if parts[0] == "routes":
        return Route(
            model=parts[1], version=int(parts[2]), worker_id=parts[3],
            address=draw(st.sampled_from(ADDRESSES)),
            protocol=draw(st.sampled_from(["kserve", "tfserving"])),
        ).to_bytes(path)  # fmt: skip
    if len(parts) == 4:
        labels = draw(st.lists(st.sampled_from(["stable", "canary"]), max_size=2, unique=True))
        return ModelVersion(
            version=int(parts[3]), artifact_uri="file:///x", labels=labels
        ).to_bytes(path)
    return Model(
        name=parts[1],
        backend=draw(st.sampled_from(["triton", "tfserving"])),
        policy=draw(st.sampled_from(["round_robin", "least_request", "sticky"])),
        sticky_header="x-user",
        plugin=draw(st.sampled_from([None, "p@1"])),
        traffic=draw(st.sampled_from([{}, {"1": 50, "2": 50}])),
    ).to_bytes(path)


model_paths = st.sampled_from(MODELS).map(layout.model)
version_paths = st.builds(layout.version, st.sampled_from(MODELS), st.sampled_from(VERSIONS))
route_paths = st.builds(
    layout.route, st.sampled_from(MODELS), st.sampled_from(VERSIONS), st.sampled_from(WORKERS)
)
service_paths = st.sampled_from(["s0", "s1"]).map(layout.service)
record_paths = st.one_of(model_paths, version_paths, route_paths, service_paths)
subtree_paths = st.one_of(
    record_paths,
    st.sampled_from(MODELS).map(layout.versions),
    st.sampled_from(MODELS).map(layout.model_routes),
    st.builds(layout.version_routes, st.sampled_from(MODELS), st.sampled_from(VERSIONS)),
    st.sampled_from([layout.ROUTES, layout.SERVICES]),
)


@st.composite
def operations(draw: Any) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 40))):
        what = draw(st.sampled_from(["put", "put", "put", "bad", "delete", "publish"]))
        if what == "put":
            path = draw(record_paths)
            ops.append(("put", path, record_for(path, draw)))
        elif what == "bad":  # a record that fails to parse, or no data at all
            ops.append(("put", draw(record_paths), draw(st.sampled_from([b"{not json", b""]))))
        elif what == "delete":
            ops.append(("delete", draw(subtree_paths), draw(st.booleans())))
        else:
            ops.append(("publish",))
    return [*ops, ("publish",)]


class DrivenWatcher:
    """A TableWatcher whose events come from a :class:`Tree` by hand (no ZooKeeper)."""

    def __init__(self) -> None:
        self.published: list[tuple[RoutingTable, TableChange]] = []
        self.watcher = TableWatcher(
            None,  # type: ignore[arg-type]
            GatewayMetrics(CollectorRegistry()),
            lambda table, change: self.published.append((table, change)),
        )
        self.watcher._loop = asyncio.get_running_loop()
        self.handlers = {root: self.watcher._handler(root) for root in WATCHED}

    def deliver(self, events: list[TreeEvent]) -> None:
        for event in events:
            root = "/" + event.path.strip("/").split("/")[0] if event.path else None
            for name, handler in self.handlers.items():
                if root in (None, name):
                    handler(event)

    async def idle(self) -> None:
        """Wait until every delivered event is applied (and published, if it changed)."""
        for _ in range(100_000):
            if self.watcher._task is None:
                return
            await asyncio.sleep(0)
        raise AssertionError("the watcher never finished its updates")


def assert_same_table(table: RoutingTable, full: RoutingTable) -> None:
    assert dict(table.models) == dict(full.models)
    assert dict(table.services) == dict(full.services)
    assert dict(table.addresses) == dict(full.addresses)


async def replay(ops: list[tuple[Any, ...]]) -> None:
    tree = Tree()
    driven = DrivenWatcher()
    driven.deliver([TreeEvent("initialized")])
    await driven.idle()
    ((before, _),) = driven.published
    for op in ops:
        if op[0] != "publish":
            driven.deliver(tree.put(op[1], op[2]) if op[0] == "put" else tree.delete(op[1], op[2]))
            continue
        count = len(driven.published)
        await driven.idle()
        assert len(driven.published) in (count, count + 1)  # one publish per burst
        table, change = driven.published[-1]
        assert_same_table(table, build_table(dict(tree.nodes)))
        if len(driven.published) == count:
            continue  # nothing changed since the last publish
        differs = {name for name in {*table.models, *before.models, *table.services,
                                     *before.services}
                   if table.models.get(name) != before.models.get(name)
                   or table.services.get(name) != before.services.get(name)}  # fmt: skip
        assert change.models == differs
        for name in set(table.models) - differs:  # shared, not rebuilt
            assert table.models[name] is before.models[name]
        assert change.added == set(table.addresses) - set(before.addresses)
        assert change.removed == set(before.addresses) - set(table.addresses)
        before = table


@settings(max_examples=400, deadline=None)
@given(operations())
def test_random_event_sequences_give_the_table_a_full_build_gives(ops: list[tuple[Any, ...]]):
    asyncio.run(replay(ops))


async def test_a_burst_of_events_is_applied_in_slices_and_published_once():
    driven = DrivenWatcher()
    tree = Tree()
    for i in range(600):  # 4 nodes per model: its record, a route and the route's parents
        model, route = layout.model(f"m{i}"), layout.route(f"m{i}", 1, "w0")
        driven.deliver(tree.put(model, Model(name=f"m{i}", backend="triton").to_bytes(model)))
        driven.deliver(tree.put(route, Route(model=f"m{i}", version=1, worker_id="w0",
                                             address="h:1", protocol="kserve").to_bytes(route)))  # fmt: skip
    driven.deliver([TreeEvent("initialized")])
    seen: list[tuple[int, int]] = []  # (queued nodes, tables published) at each turn

    async def watch() -> None:
        while True:
            seen.append((len(driven.watcher._queue), len(driven.published)))
            await asyncio.sleep(0)

    watching = asyncio.create_task(watch())
    await driven.idle()
    watching.cancel()
    ((table, change),) = driven.published
    assert len(table.models) == 600 and change.models == set(table.models)
    assert_same_table(table, build_table(dict(tree.nodes)))
    # other tasks ran while the 2,400 nodes were applied, and while 600 models were derived
    assert any(0 < queued < 2400 for queued, _ in seen)
    assert sum(1 for queued, published in seen if queued == 0 and not published) >= 2


def test_a_burst_derived_in_slices_is_one_publish_with_every_change():
    state = TableState()
    for i in range(10):
        path = layout.route(f"m{i}", 1, "w0")
        state.apply(path, Route(model=f"m{i}", version=1, worker_id="w0", address=f"h:{i}",
                                protocol="kserve").to_bytes(path))  # fmt: skip
    slices = 1
    while not state.step(3):
        slices += 1
    table, change = state.publish(1)
    assert slices == 4  # 3 + 3 + 3 + 1 models
    assert change.models == {f"m{i}" for i in range(10)} == set(table.models)
    assert change.added == {f"h:{i}" for i in range(10)} and not change.removed
    assert table.models["m3"].kind == "triton"  # a route without a model record: routable


def test_a_removed_model_record_leaves_its_routes_routable_and_its_subtree_can_go_in_one_event():
    state = TableState()
    model, route = layout.model("m"), layout.route("m", 2, "w1")
    state.apply(model, Model(name="m", backend="tfserving", policy="least_request").to_bytes(model))
    state.apply(route, Route(model="m", version=2, worker_id="w1", address="h:1",
                             protocol="tfserving").to_bytes(route))  # fmt: skip
    first, _ = state.publish(1)
    assert first.models["m"].record.policy == "least_request"

    state.apply(model, None)
    second, change = state.publish(2)
    assert change.models == {"m"} and not change.added and not change.removed
    assert second.models["m"].record.policy == "round_robin"  # the default record
    assert second.models["m"].kind == "tfserving"  # from the route's protocol

    state.apply(layout.model_routes("m"), None)  # only the top of the subtree is reported
    third, change = state.publish(3)
    assert "m" not in third.models
    assert change.models == {"m"} and change.removed == {"h:1"}


def test_a_subtree_removed_in_one_event_takes_everything_under_it():
    state = TableState()
    model, version = layout.model("m"), layout.version("m", 3)
    state.apply(model, Model(name="m", backend="triton").to_bytes(model))
    state.apply(version, ModelVersion(version=3, artifact_uri="file:///x",
                                      labels=["stable"]).to_bytes(version))  # fmt: skip
    route = layout.route("m", 3, "w1")
    state.apply(route, Route(model="m", version=3, worker_id="w1", address="h:1",
                             protocol="kserve").to_bytes(route))  # fmt: skip
    assert state.publish(1)[0].models["m"].labels == {"stable": 3}

    state.apply(model, None)  # the model's node with its versions/ (one event)
    state.apply(layout.version_routes("m", 3), None)  # a version's routes (one event)
    state.apply(model, Model(name="m", backend="triton").to_bytes(model))
    table, change = state.publish(2)
    assert dict(table.models["m"].versions) == {} and dict(table.models["m"].labels) == {}
    assert change.removed == {"h:1"}


def test_changes_compose_as_one():
    first = TableChange(frozenset({"a"}), frozenset({"x"}), frozenset({"y"}))
    later = TableChange(frozenset({"b"}), frozenset({"y"}), frozenset({"x", "z"}))
    both = first.then(later)
    assert both.models == {"a", "b"}
    assert both.added == {"y"} and both.removed == {"x", "z"}


# -- consumers fed by the change ----------------------------------------------------------


def route_nodes(routes: list[tuple[str, str, str]]) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for model, worker, address in routes:
        path = layout.route(model, 1, worker)
        out[path] = Route(model=model, version=1, worker_id=worker, address=address,
                          protocol="kserve").to_bytes(path)  # fmt: skip
    return out


def test_router_drops_state_of_unused_addresses_once_no_call_is_in_flight():
    state = TableState()
    for path, data in route_nodes(
        [("a", "w1", "h:1"), ("b", "w1", "h:1"), ("b", "w2", "h:2")]
    ).items():
        state.apply(path, data)
    router = Router(GatewayMetrics(CollectorRegistry()))
    router.set_table(*state.publish(1))
    for address in ("h:1", "h:2"):
        router._state(address)
    router._state("h:2").in_flight = 1

    state.apply(layout.model_routes("b"), None)
    table, change = state.publish(2)
    assert change.removed == {"h:2"}  # h:1 still serves model a
    router.set_table(table, change)
    assert set(router.addresses) == {"h:1", "h:2"}  # a call is still in flight on h:2

    router._state("h:2").in_flight = 0
    state.apply(layout.model_routes("a"), None)
    router.set_table(*state.publish(3))
    assert set(router.addresses) == set()


def test_programmer_plans_only_the_changed_models():
    programmer = Programmer("/run/routes.map", slots=8)
    fleet = route_nodes([(f"m{i}", "w1", f"10.0.0.1:{8000 + i}") for i in range(5)])
    state = TableState()
    for path, data in fleet.items():
        state.apply(path, data)
    table, _ = state.publish(1)
    assert len(programmer.plan(fast_routes(table, resolve))) == 5 * 4

    for path, data in route_nodes([("m2", "w2", "10.0.0.2:9000")]).items():
        state.apply(path, data)
    state.apply(layout.model_routes("m4"), None)
    table, change = state.publish(2)
    assert change.models == {"m2", "m4"}
    routes = fast_routes(table, resolve, change.models)
    assert [r.model for r in routes.values()] == ["m2"]
    # the new instance is up before the map sends calls to it; m4's instance is taken out
    # after its map entry is gone
    assert programmer.plan(routes, change.models) == [
        "set server i_5/s addr 10.0.0.2 port 9000",
        "set server i_5/s state ready",
        "set server i_5/s health up",
        "set map /run/routes.map k:m2/1 rr,i_2=10.0.0.1:8002,i_5=10.0.0.2:9000",
        "del map /run/routes.map k:m4/1",
        "set server i_4/s state maint",
    ]
    # the same plan from the whole table: nothing left to do
    assert programmer.plan(fast_routes(table, resolve)) == []
