"""The Registry wrapper against a real ZooKeeper."""

import asyncio

import pytest

from registry import (
    ConflictError,
    InvalidRecordError,
    NotFoundError,
    Registry,
    ZooKeeperUnavailableError,
    layout,
)
from registry.records import Assignment, Group, Model, ModelVersion, Plugin, Route, Service, Worker
from tests.servers.zk import expire_session, wait_for

SHA = "a" * 64


@pytest.mark.parametrize(
    ("path", "record"),
    [
        (layout.model("m"), Model(name="m", backend="tfserving", plugin="digits@1.0")),
        (
            layout.version("m", 1),
            ModelVersion(version=1, artifact_uri="file:///a", labels=["stable"]),
        ),
        (
            layout.assignment("w1", "m", 1),
            Assignment(
                model="m", version=1, backend="triton", artifact_uri="file:///a", sha256=SHA
            ),
        ),
        (layout.service("ocr"), Service(name="ocr", urls=["http://127.0.0.1:1/x"])),
        (
            layout.plugin("digits", "1.0"),
            Plugin(
                name="digits",
                version="1.0",
                sha256=SHA,
                size=10,
                entrypoint="digits:Plugin",
                blob_url="http://m/v1/blobs/" + SHA,
            ),
        ),
        (layout.group("ads"), Group(name="ads", description="ads team")),
    ],
)
def test_persistent_records_round_trip(registry: Registry, path, record):
    registry.create(path, record)
    got, version = registry.get(path, type(record))
    assert got == record
    assert version == 0


def test_root_and_top_level_folders_are_created(registry: Registry):
    for path in layout.TOP_LEVEL:
        assert registry.exists(path), path


def test_create_twice_conflicts(registry: Registry):
    registry.create(layout.group("g"), Group(name="g"))
    with pytest.raises(ConflictError, match="/groups/g already exists"):
        registry.create(layout.group("g"), Group(name="g"))


def test_compare_and_set(registry: Registry):
    path = layout.model("m")
    registry.create(path, Model(name="m", backend="triton"))
    model, version = registry.get(path, Model)
    assert registry.update(path, model.model_copy(update={"replicas": 2}), version) == version + 1
    with pytest.raises(ConflictError, match=r"/models/m changed since it was read"):
        registry.update(path, model.model_copy(update={"replicas": 5}), version)
    assert registry.get(path, Model)[0].replicas == 2


def test_missing_node(registry: Registry):
    with pytest.raises(NotFoundError, match="/models/nope does not exist"):
        registry.get(layout.model("nope"), Model)
    assert registry.read(layout.model("nope"), Model) is None
    assert registry.children("/models/nope") == []
    assert registry.delete(layout.model("nope")) is False


def test_invalid_record_is_never_written(registry: Registry):
    bad = Model(name="m", backend="triton")
    object.__setattr__(bad, "replicas", 1000)
    with pytest.raises(InvalidRecordError, match=r"/models/m.*replicas"):
        registry.create(layout.model("m"), bad)
    assert not registry.exists(layout.model("m"))


def test_corrupt_node_names_its_path(registry: Registry):
    registry.kazoo.create("/models/broken", b"{not json")
    with pytest.raises(InvalidRecordError, match="/models/broken"):
        registry.get("/models/broken", Model)


def test_snapshot_reads_a_subtree(registry: Registry):
    for v, worker in [(1, "w1"), (1, "w2"), (2, "w1")]:
        registry.put(
            layout.route("m", v, worker),
            Route(model="m", version=v, worker_id=worker, address=f"{worker}:1", protocol="kserve"),
        )
    snap = registry.snapshot(layout.ROUTES)
    routes = {p: Route.from_bytes(p, d) for p, d in snap.items() if p.count("/") == 4}
    assert set(routes) == {"/routes/m/1/w1", "/routes/m/1/w2", "/routes/m/2/w1"}
    assert routes["/routes/m/2/w1"].address == "w1:1"


def _worker(worker_id: str = "w1") -> Worker:
    return Worker(worker_id=worker_id, host="127.0.0.1", backend="triton", address="127.0.0.1:8001")


def test_ephemeral_vanishes_with_its_session(zookeeper, zk_root, registry: Registry):
    other = Registry(zookeeper.hosts, zk_root).start()
    other.register_ephemeral(layout.worker("w1"), _worker())
    assert registry.exists(layout.worker("w1"))
    other.stop()
    wait_for(lambda: not registry.exists(layout.worker("w1")), what="ephemeral node to vanish")


def test_ephemeral_comes_back_after_session_expiry(registry: Registry):
    node = registry.register_ephemeral(layout.worker("w1"), _worker())
    first_session = registry.session_id
    expire_session(registry)
    assert registry.session_id != first_session
    record = wait_for(
        lambda: registry.read(layout.worker("w1"), Worker), what="re-created worker node"
    )
    assert record.worker_id == "w1"
    # The node belongs to the new session, and updates keep working.
    assert registry.kazoo.exists(layout.worker("w1")).owner_session_id == registry.session_id
    node.update(_worker().model_copy(update={"state": "draining"}))
    assert registry.get(layout.worker("w1"), Worker)[0].state == "draining"
    assert node.recreated == 1


def test_ephemeral_survives_short_outage(zookeeper, registry: Registry):
    registry.register_ephemeral(layout.worker("w1"), _worker())
    session = registry.session_id
    zookeeper.stop()
    wait_for(lambda: not registry.connected, what="client to notice the outage")
    zookeeper.start()
    wait_for(lambda: registry.connected, what="client to reconnect")
    assert registry.session_id == session
    assert registry.exists(layout.worker("w1"))


def test_ephemeral_remove_stops_recreation(registry: Registry):
    node = registry.register_ephemeral(layout.worker("w1"), _worker())
    kept = registry.register_ephemeral(layout.worker("w2"), _worker("w2"))
    node.remove()
    expire_session(registry)
    # The node still registered is re-created by the same reconnect that would re-create a
    # removed one: once it is back, the re-creation pass has run.
    wait_for(lambda: kept.recreated == 1, what="the kept node re-created")
    assert registry.exists(layout.worker("w2"))
    assert not registry.exists(layout.worker("w1")) and node.recreated == 0


async def test_children_watch_delivered_to_asyncio(registry: Registry):
    loop = asyncio.get_running_loop()
    seen: asyncio.Queue[list[str]] = asyncio.Queue()
    registry.watch_children(layout.version_routes("m", 1), seen.put_nowait, loop)
    assert await asyncio.wait_for(seen.get(), 10) == []
    route = Route(model="m", version=1, worker_id="w1", address="a:1", protocol="kserve")
    await asyncio.to_thread(registry.put, layout.route("m", 1, "w1"), route)
    assert await asyncio.wait_for(seen.get(), 10) == ["w1"]
    await asyncio.to_thread(registry.delete, layout.route("m", 1, "w1"))
    assert await asyncio.wait_for(seen.get(), 10) == []


async def test_tree_watch_sees_adds_updates_and_removes(registry: Registry):
    loop = asyncio.get_running_loop()
    events = asyncio.Queue()
    watch = registry.watch_tree(layout.ROUTES, events.put_nowait, loop)

    async def next_event(kind):
        while True:
            event = await asyncio.wait_for(events.get(), 10)
            if event.kind == kind:
                return event

    await next_event("initialized")
    path = layout.route("m", 1, "w1")
    route = Route(model="m", version=1, worker_id="w1", address="a:1", protocol="kserve")
    await asyncio.to_thread(registry.put, path, route)
    while (event := await next_event("added")).path != path:
        pass
    assert Route.from_bytes(path, event.data) == route
    await asyncio.to_thread(registry.put, path, route.model_copy(update={"address": "b:2"}))
    event = await next_event("updated")
    assert Route.from_bytes(path, event.data).address == "b:2"
    assert watch.children(layout.version_routes("m", 1)) == ["w1"]
    await asyncio.to_thread(registry.delete, path)
    assert (await next_event("removed")).path == path
    watch.close()


def test_connect_to_dead_address_fails_clearly():
    reg = Registry("127.0.0.1:1", "/x", connect_timeout=1.5)
    with pytest.raises(ZooKeeperUnavailableError, match=r"127\.0\.0\.1:1 within 1\.5s"):
        reg.start()  # gives up (a hang would fail on the suite's timeout)


def test_bad_root_is_refused():
    with pytest.raises(ValueError, match="absolute path"):
        Registry("127.0.0.1:1", "modelgate")


def test_operations_fail_instead_of_hanging_while_zookeeper_is_down(zookeeper, zk_root):
    reg = Registry(zookeeper.hosts, zk_root, operation_timeout=1.0).start()
    node = reg.register_ephemeral(layout.worker("w1"), _worker())
    zookeeper.stop()
    try:
        wait_for(lambda: not reg.connected, what="client to notice the outage")
        with pytest.raises(ZooKeeperUnavailableError, match="/workers/w1"):
            node.remove()
        with pytest.raises(ZooKeeperUnavailableError, match="/models/m"):
            reg.put(layout.model("m"), Model(name="m", backend="triton"))
    finally:
        zookeeper.start()
    reg.stop()


def test_recursive_delete(registry: Registry):
    for v, worker in [(1, "w1"), (1, "w2"), (2, "w1")]:
        registry.put(
            layout.route("m", v, worker),
            Route(model="m", version=v, worker_id=worker, address="a:1", protocol="kserve"),
        )
    assert registry.delete(layout.model_routes("m"), recursive=True) is True
    assert registry.children(layout.ROUTES) == []
