"""The placement function, without ZooKeeper."""

import random

import pytest

from manager_api.placement import Demand, WorkerView, place


def w(worker_id: str, backend: str = "triton", **kw) -> WorkerView:
    return WorkerView(worker_id=worker_id, backend=backend, **kw)


def d(model: str = "m", version: int = 1, replicas: int = 1, **kw) -> Demand:
    return Demand(
        model=model, version=version, backend=kw.pop("backend", "triton"), replicas=replicas, **kw
    )


def test_spreads_replicas_one_per_worker():
    plan = place([d(replicas=2)], [w("a"), w("b"), w("c")], {})
    holders = plan.holders(("m", 1))
    assert len(holders) == 2
    assert not plan.shortfalls


def test_never_two_replicas_of_a_version_on_one_worker_and_reports_shortfall():
    plan = place([d(replicas=3)], [w("a"), w("b")], {})
    assert plan.holders(("m", 1)) == {"a", "b"}
    assert str(plan.shortfalls[("m", 1)]) == (
        "2/3 placed: only 2 usable triton worker(s) and at most one replica per worker"
    )


def test_backend_kind_and_label_constraints():
    workers = [w("t1"), w("f1", "tfserving"), w("f2", "tfserving", labels={"gpu": "true"})]
    plan = place([d(backend="tfserving", constraints={"gpu": "true"})], workers, {})
    assert plan.holders(("m", 1)) == {"f2"}
    plan = place([d(backend="tfserving", replicas=3, constraints={"gpu": "true"})], workers, {})
    assert plan.holders(("m", 1)) == {"f2"}
    short = place(
        [d(backend="tfserving", replicas=3, constraints={"zone": "x"})], workers, {}
    ).shortfalls[("m", 1)]
    assert str(short) == "0/3 placed: no tfserving worker with label zone=x"
    none = place([d(backend="tfserving")], [w("t1")], {}).shortfalls[("m", 1)]
    assert none.reason == "no tfserving worker registered"


def test_least_loaded_first_by_declared_memory():
    workers = [w("big", capacity_memory_mb=1000), w("small", capacity_memory_mb=200)]
    current = {"big": {("x", 1)}, "small": set()}
    demands = [d("x", memory_mb=150), d("m", memory_mb=100)]
    plan = place(demands, workers, current)
    # big holds 150/1000 = 15 %, small 0 % -> small first
    assert plan.holders(("m", 1)) == {"small"}
    # a replica that does not fit anywhere is reported, not placed
    plan = place([d("huge", memory_mb=5000)], workers, {})
    assert plan.holders(("huge", 1)) == set()
    assert "not enough free memory" in plan.shortfalls[("huge", 1)].reason


def test_existing_assignments_stay_and_cordoned_keep_theirs():
    workers = [w("a", cordoned=True), w("b"), w("c")]
    plan = place([d(replicas=1)], workers, {"a": {("m", 1)}})
    assert plan.holders(("m", 1)) == {"a"}
    # but a cordoned worker gets nothing new
    plan = place([d(replicas=2)], workers, {"a": {("m", 1)}, "c": {("m", 1)}})
    assert plan.holders(("m", 1)) == {"a", "c"}
    plan = place([d(model="n", replicas=3)], workers, {})
    assert plan.holders(("n", 1)) == {"b", "c"}
    assert "2/3 placed" in str(plan.shortfalls[("n", 1)])


def test_gone_worker_replica_moves_and_scale_down_removes_surplus():
    plan = place([d(replicas=1)], [w("b")], {"dead": {("m", 1)}})
    assert plan.desired == {"b": {("m", 1)}}
    plan = place([d(replicas=1)], [w("a"), w("b")], {"a": {("m", 1)}, "b": {("m", 1)}})
    assert len(plan.holders(("m", 1))) == 1
    # a model that is not wanted any more is dropped everywhere
    assert place([], [w("a")], {"a": {("m", 1)}}).desired == {}


def test_draining_worker_keeps_replica_until_replacement_is_ready():
    workers = [w("a", draining=True), w("b")]
    current = {"a": {("m", 1)}}
    plan = place([d()], workers, current)
    assert plan.holders(("m", 1)) == {"a", "b"}
    plan = place([d()], workers, {"a": {("m", 1)}, "b": {("m", 1)}}, ready={("m", 1): {"b"}})
    assert plan.holders(("m", 1)) == {"b"}


def test_idempotent():
    workers = [w("a"), w("b"), w("c", "tfserving")]
    demands = [d("m", replicas=2), d("n", replicas=1), d("t", backend="tfserving")]
    first = place(demands, workers, {})
    second = place(demands, workers, first.desired)
    assert first.desired == second.desired


def test_spreads_models_over_workers_by_assignment_count():
    plan = place([d("m1"), d("m2"), d("m3"), d("m4")], [w("a"), w("b")], {})
    assert sorted(len(keys) for keys in plan.desired.values()) == [2, 2]


def reference_place(demands, workers, current, ready=None):
    """The straightforward placement (a scan of every worker per replica): the oracle that the
    heap-based ``place`` must agree with."""
    live = {w.worker_id: w for w in workers}
    ready_on = {k: set(v) for k, v in (ready or {}).items()}
    demand_list = sorted(demands, key=lambda d: d.key)
    memory = {d.key: d.memory_mb for d in demand_list}
    desired = {w: set() for w in live}
    used = dict.fromkeys(live, 0)
    holders_now = {}
    for worker_id, keys in current.items():
        for key in keys:
            holders_now.setdefault(key, []).append(worker_id)

    def matches(w, d):
        return w.backend == d.backend and all(
            w.labels.get(k) == v for k, v in d.constraints.items()
        )

    def assign(worker_id, key):
        desired[worker_id].add(key)
        used[worker_id] += memory.get(key, 0)

    for d in demand_list:
        keep = [live[w] for w in holders_now.get(d.key, []) if w in live and not live[w].draining]
        keep = sorted((w for w in keep if matches(w, d)), key=lambda w: (w.cordoned, w.worker_id))
        for w in keep[: d.replicas]:
            assign(w.worker_id, d.key)

    def load_key(w, model):
        cap = w.capacity_memory_mb
        same = sum(1 for m, _ in desired[w.worker_id] if m == model)
        share = used[w.worker_id] / cap if cap else 0.0
        return (share, len(desired[w.worker_id]), same, w.worker_id)

    placed_short = set()
    for d in demand_list:
        holders = {w for w, keys in desired.items() if d.key in keys}
        while len(holders) < d.replicas:
            candidates = [
                w
                for w in live.values()
                if w.usable
                and matches(w, d)
                and w.worker_id not in holders
                and (
                    w.capacity_memory_mb is None
                    or used[w.worker_id] + d.memory_mb <= w.capacity_memory_mb
                )
            ]
            if not candidates:
                placed_short.add(d.key)
                break
            best = min(candidates, key=lambda w: load_key(w, d.model))
            assign(best.worker_id, d.key)
            holders.add(best.worker_id)
    for d in demand_list:
        holders = {w for w, keys in desired.items() if d.key in keys}
        if len(holders & ready_on.get(d.key, set())) >= d.replicas:
            continue
        for wid in holders_now.get(d.key, []):
            if wid in live and live[wid].draining and matches(live[wid], d):
                assign(wid, d.key)
    return {w: keys for w, keys in desired.items() if keys}, placed_short


@pytest.mark.parametrize("seed", range(30))
def test_agrees_with_a_scan_of_every_worker_per_replica(seed: int):
    rnd = random.Random(seed)
    workers = [
        w(
            f"w{i}",
            rnd.choice(["triton", "triton", "tfserving"]),
            labels=rnd.choice([{}, {"zone": "a"}, {"zone": "b", "gpu": "true"}]),
            capacity_memory_mb=rnd.choice([None, 300, 1000]),
            ready=rnd.random() > 0.1,
            cordoned=rnd.random() < 0.15,
            draining=rnd.random() < 0.1,
        )
        for i in range(rnd.randint(1, 12))
    ]
    demands = [
        d(
            f"m{i % 7}",
            version=1 + i // 7,
            replicas=rnd.randint(1, 4),
            backend=rnd.choice(["triton", "triton", "tfserving"]),
            constraints=rnd.choice([{}, {}, {"zone": "a"}, {"gpu": "true"}]),
            memory_mb=rnd.choice([0, 0, 50, 200]),
        )
        for i in range(rnd.randint(1, 25))
    ]
    keys = [dm.key for dm in demands] + [("gone", 1)]
    current = {
        wk.worker_id: set(rnd.sample(keys, rnd.randint(0, min(4, len(keys)))))
        for wk in [*workers, w("dead")]
    }
    ready = {k: {wk.worker_id for wk in workers if rnd.random() < 0.3} for k in keys}
    plan = place(demands, workers, current, ready=ready)
    desired, short = reference_place(demands, workers, current, ready=ready)
    assert plan.desired == desired
    assert set(plan.shortfalls) == short
