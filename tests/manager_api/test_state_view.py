"""The incremental cluster state: a ClusterView fed by TreeCache events against a real
ZooKeeper must equal a fresh full read after any sequence of changes, and a pass over the
changed models must plan what a full pass plans."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

import pytest

from manager_api.reconcile import PassResult, affected, plan_pass
from manager_api.state import Changes, ClusterState, ClusterView, read_state
from registry import Registry, layout
from registry.records import (
    Assignment,
    Model,
    ModelHealth,
    ModelVersion,
    OutOfMemory,
    Record,
    Route,
    Usage,
    Worker,
    WorkerSpec,
)
from tests.servers.zk import wait_for

MODELS = [f"m{i}" for i in range(6)]
WORKERS = [f"w{i}" for i in range(4)]


def comparable(state: ClusterState) -> dict[str, object]:
    """Everything a ClusterState holds, indexes included (change marks excluded)."""
    return {
        "models": state.models,
        "versions": state.versions,
        "workers": state.workers,
        "specs": state.specs,
        "assignments": state.assignments,
        "routes": state.routes,
        "holders": state.holders,
        "memory_used": {w: m for w, m in state.memory_used.items() if m},
        "views": state.views,
    }


@pytest.fixture
def view(registry: Registry) -> Iterator[ClusterView]:
    v = ClusterView(registry).start()
    yield v
    v.close()


def random_change(reg: Registry, rnd: random.Random) -> None:
    """One random create/update/delete of any node the view reads (some of them invalid)."""
    model, worker, v = rnd.choice(MODELS), rnd.choice(WORKERS), rnd.randint(1, 3)
    kind = rnd.choice(
        ("model", "version", "assignment", "route") * 2
        + ("assignment", "worker", "spec", "garbage", "delete_model", "delete_worker")
    )
    put: tuple[str, Record] | None = None
    if kind == "model":
        put = (
            layout.model(model),
            Model(
                name=model,
                backend=rnd.choice(["triton", "tfserving"]),
                replicas=rnd.randint(1, 3),
                memory_mb=rnd.choice([0, 100, 250]),
                state=rnd.choice(["online", "online", "offline"]),
            ),
        )
    elif kind == "version":
        put = (
            layout.version(model, v),
            ModelVersion(
                version=v, artifact_uri=f"file:///{model}/{v}", labels=rnd.choice([[], ["stable"]])
            ),
        )
    elif kind == "assignment":
        path = layout.assignment(worker, model, v)
        if rnd.random() < 0.4:
            reg.delete(path)
            return
        put = (path, Assignment(model=model, version=v, backend="triton", artifact_uri="file:///x"))
    elif kind == "route":
        path = layout.route(model, v, worker)
        if rnd.random() < 0.4:
            reg.delete(path)
            return
        put = (
            path,
            Route(model=model, version=v, worker_id=worker, address="x:1", protocol="kserve"),
        )
    elif kind == "worker":
        put = (
            layout.worker(worker),
            Worker(
                worker_id=worker,
                host="h",
                backend="triton",
                address="x:1",
                labels=rnd.choice([{}, {"zone": "a"}]),
                capacity_memory_mb=rnd.choice([None, 500]),
                heartbeat=rnd.random(),
                models={f"{model}@{v}": ModelHealth(state="READY")},
            ),
        )
    elif kind == "spec":
        put = (
            layout.assignments(worker),
            WorkerSpec(cordoned=rnd.random() < 0.5, draining=rnd.random() < 0.3),
        )
    elif kind == "garbage":  # a record that does not parse counts as absent
        path = rnd.choice(
            [
                layout.model(model),
                layout.version(model, v),
                layout.worker(worker),
                layout.assignment(worker, model, v),
                layout.assignments(worker),
            ]
        )
        reg.kazoo.ensure_path(path)
        reg.kazoo.set(path, b"{not json")
    elif kind == "delete_model":
        reg.delete(layout.model(model), recursive=True)
    elif kind == "delete_worker":
        reg.delete(rnd.choice([layout.worker(worker), layout.assignments(worker)]), recursive=True)
    if put is not None:
        reg.put(*put)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_view_equals_a_fresh_read_after_random_changes(
    registry: Registry, view: ClusterView, seed: int
):
    rnd = random.Random(seed)
    for round_ in range(4):
        for _ in range(60):
            random_change(registry, rnd)
        fresh = comparable(read_state(registry))

        def caught_up(fresh: dict[str, object] = fresh) -> bool:
            with view.read() as state:
                return comparable(state) == fresh

        wait_for(caught_up, timeout=30, what=f"the view to equal a fresh read (round {round_})")
        assert comparable(view.copy()) == fresh
    with view.read() as state:
        assert state.models or state.assignments, "the random changes left nothing to compare"


def test_own_writes_are_visible_after_wait_written(registry: Registry, view: ClusterView):
    model = Model(name="m", backend="triton")
    registry.create(layout.model("m"), model)
    assert view.wait_written({layout.model("m"): model})
    with view.read() as state:
        assert state.models["m"] == model
    registry.delete(layout.model("m"), recursive=True)
    assert view.wait_written({layout.model("m"): None})
    with view.read() as state:
        assert "m" not in state.models


def test_write_many_puts_then_deletes(registry: Registry):
    old = Assignment(model="m", version=1, backend="triton", artifact_uri="file:///old")
    new = old.model_copy(update={"artifact_uri": "file:///new"})
    registry.put(layout.assignment("w1", "m", 1), old)
    registry.write_many(
        {layout.assignment("w1", "m", 1): new, layout.assignment("w2", "m", 1): new},
        [layout.assignment("w3", "m", 1)],  # never existed: not an error
    )
    assert registry.read(layout.assignment("w1", "m", 1), Assignment) == new
    assert registry.read(layout.assignment("w2", "m", 1), Assignment) == new
    registry.write_many({}, [layout.assignment("w1", "m", 1)])
    assert registry.children(layout.assignments("w1")) == []


# -- pure state: change marks and incremental passes -----------------------------------------


def node(state: ClusterState, path: str, record: Record | None) -> None:
    state.apply(path, None if record is None else record.to_bytes(path))


def worker(wid: str, **kw: object) -> Worker:
    return Worker(worker_id=wid, host="h", backend="triton", address="x:1", **kw)  # type: ignore[arg-type]


def test_heartbeats_and_health_do_not_mark_a_worker_changed_but_labels_do():
    state = ClusterState()
    node(state, layout.worker("a"), worker("a"))
    assert state.take_changed() == (set(), {"a"})
    node(
        state,
        layout.worker("a"),
        worker("a", heartbeat=5.0, models={"m@1": ModelHealth(state="READY")}),
    )
    assert state.take_changed() == (set(), set())
    node(state, layout.worker("a"), worker("a", labels={"zone": "b"}))
    assert state.take_changed() == (set(), {"a"})
    node(state, layout.assignments("a"), WorkerSpec(draining=True))
    assert state.take_changed() == (set(), {"a"})
    assert state.views["a"].draining


def test_measured_usage_marks_a_worker_changed_only_past_a_step_of_its_capacity():
    state = ClusterState()
    measured = {"capacity_cpu": 4.0, "capacity_memory_mb": 1000}
    node(state, layout.worker("a"), worker("a", **measured, usage=Usage(cpu=1.0, memory_mb=500)))
    assert state.take_changed() == (set(), {"a"})
    # within 10 % of the capacity (0.4 cores, 100 MiB) of what placement last took in
    for cpu, memory in ((1.3, 550.0), (0.7, 420.0), (1.35, 590.0)):
        usage = Usage(cpu=cpu, memory_mb=memory)
        node(state, layout.worker("a"), worker("a", **measured, usage=usage, heartbeat=cpu))
        assert state.take_changed() == (set(), set())
    assert (state.views["a"].cpu_used, state.views["a"].memory_used_mb) == (1.0, 500.0)
    node(state, layout.worker("a"), worker("a", **measured, usage=Usage(cpu=1.5, memory_mb=500)))
    assert state.take_changed() == (set(), {"a"})
    assert state.views["a"].cpu_used == 1.5
    node(state, layout.worker("a"), worker("a", **measured, usage=Usage(cpu=1.5, memory_mb=620)))
    assert state.take_changed() == (set(), {"a"})
    assert state.views["a"].memory_used_mb == 620
    # without a capacity a measurement compares with nothing: placement does not see it
    node(state, layout.worker("b"), worker("b", usage=Usage(cpu=3.0, memory_mb=5000)))
    assert (state.views["b"].cpu_used, state.views["b"].memory_used_mb) == (None, None)
    state.take_changed()
    # an out-of-memory record: placement avoids that copy there
    oom = {"m@2": OutOfMemory(memory_mb=990, capacity_mb=1000)}
    node(
        state,
        layout.worker("a"),
        worker("a", **measured, usage=Usage(cpu=1.5, memory_mb=620), ooms=oom),
    )
    assert state.take_changed() == (set(), {"a"})
    assert state.views["a"].avoid == {("m", 2)}


def test_a_copys_measured_size_counts_where_it_is_more_than_declared():
    state = ClusterState()
    node(state, layout.model("m"), Model(name="m", backend="triton", memory_mb=100))
    node(state, layout.version("m", 1), ModelVersion(version=1, artifact_uri="file:///m"))
    node(state, layout.worker("a"), worker("a", capacity_memory_mb=1000))
    node(state, layout.worker("b"), worker("b", capacity_memory_mb=1000))
    node(
        state,
        layout.assignment("a", "m", 1),
        Assignment(model="m", version=1, backend="triton", artifact_uri="file:///m"),
    )
    state.take_changed()
    assert state.memory_used["a"] == 100 and state.demands_of(state.models["m"])[0].memory_mb == 100

    def measure(wid: str, memory_mb: float, cpu: float = 0.25) -> tuple[set[str], set[str]]:
        usage = {"m@1": Usage(cpu=cpu, memory_mb=memory_mb)}
        node(state, layout.worker(wid), worker(wid, capacity_memory_mb=1000, model_usage=usage))
        return state.take_changed()

    assert measure("a", 249.2) == ({"m"}, set())
    demand = state.demands_of(state.models["m"])[0]
    assert (demand.memory_mb, demand.cpu) == (250, 0.25)
    assert state.memory_used["a"] == 250
    # the largest seen anywhere counts; growth within 10 % changes nothing
    assert measure("b", 200.0) == (set(), set())
    assert measure("a", 270.0, cpu=0.5) == (set(), set())
    assert state.demands_of(state.models["m"])[0] == dataclasses.replace(demand, cpu=0.5)
    assert measure("b", 300.0) == ({"m"}, set())
    assert state.memory_used["a"] == 300 and "b" not in state.memory_used
    # a declared size above the measured one counts instead
    node(state, layout.model("m"), Model(name="m", backend="triton", memory_mb=400))
    assert state.memory_used["a"] == 400
    # the measurements go with the model
    node(state, layout.model("m"), None)
    assert state.model_sizes == {} and state.model_cpu == {} and state.memory_used["a"] == 0
    placement = state.copy()
    assert placement.model_sizes == state.model_sizes


def apply_pass(state: ClusterState, names: set[str]) -> None:
    """Plan the models ``names`` and write the result into ``state`` (as the view would)."""
    for path, rec in plan_pass(state, names).writes.items():
        node(state, path, rec)


def writes(result: PassResult) -> dict[str, dict[str, object] | None]:
    """A pass's writes without the assignments' creation times."""
    return {p: r and r.model_dump(exclude={"created"}) for p, r in result.writes.items()}


def fleet(models: int, workers: int) -> ClusterState:
    state = ClusterState()
    for i in range(workers):
        node(state, layout.worker(f"w{i}"), worker(f"w{i}", capacity_memory_mb=10_000))
    for i in range(models):
        name = f"m{i}"
        node(
            state, layout.model(name), Model(name=name, backend="triton", replicas=3, memory_mb=10)
        )
        node(
            state, layout.version(name, 1), ModelVersion(version=1, artifact_uri=f"file:///{name}")
        )
    apply_pass(state, state.model_names())
    state.take_changed()
    return state


@pytest.mark.parametrize(
    "change",
    [
        "kill_worker",
        "add_worker",
        "scale_up",
        "drain",
        "new_model",
        "delete_model",
        "offline",
        "busy_worker",
    ],
)
def test_a_pass_over_what_changed_plans_what_a_full_pass_plans(change: str):
    state = fleet(models=40, workers=8)
    short: set[str] = set()  # the models short of replicas as of the last pass
    if change == "kill_worker":
        node(state, layout.worker("w3"), None)
    elif change == "add_worker":
        node(state, layout.model("m0"), Model(name="m0", backend="triton", replicas=9))
        apply_pass(state, {"m0"})  # 1 short: 9 wanted, 8 workers
        state.take_changed()
        short = {m for m, _ in plan_pass(state, {"m0"}).shortfalls}
        assert short == {"m0"}
        node(state, layout.worker("w8"), worker("w8", capacity_memory_mb=10_000))
    elif change == "scale_up":
        node(state, layout.model("m5"), Model(name="m5", backend="triton", replicas=5))
    elif change == "drain":
        node(state, layout.assignments("w1"), WorkerSpec(cordoned=True, draining=True))
    elif change == "new_model":
        node(state, layout.model("n"), Model(name="n", backend="triton", replicas=2))
        node(state, layout.version("n", 1), ModelVersion(version=1, artifact_uri="file:///n"))
    elif change == "delete_model":
        node(state, layout.version("m7", 1), None)
        node(state, layout.model("m7"), None)
    elif change == "offline":
        node(state, layout.model("m9"), Model(name="m9", backend="triton", state="offline"))
    elif change == "busy_worker":  # measured far busier than the others: one copy moves
        for wid, keys in state.assignments.items():
            for model, v in keys:
                route = Route(
                    model=model, version=v, worker_id=wid, address="x:1", protocol="kserve"
                )
                node(state, layout.route(model, v, wid), route)
        state.take_changed()
        usage = Usage(cpu=3.8, memory_mb=900)
        node(
            state,
            layout.worker("w2"),
            worker("w2", capacity_memory_mb=10_000, capacity_cpu=4.0, usage=usage),
        )
    models, workers = state.take_changed()
    names = affected(state, Changes(models, workers, resynced=False), short)
    incremental = plan_pass(state, names)
    full = plan_pass(state, state.model_names())
    assert incremental.writes, "the change should need writes"
    assert writes(incremental) == writes(full)
    assert incremental.shortfalls == full.shortfalls
    # a steady pass after it has nothing to do
    for path, rec in incremental.writes.items():
        node(state, path, rec)
    models, workers = state.take_changed()
    assert plan_pass(state, affected(state, Changes(models, workers, False), short)).writes == {}
