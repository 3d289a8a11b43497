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
    heap-based ``place`` must agree with (without rebalance)."""
    live = {w.worker_id: w for w in workers}
    ready_on = {k: set(v) for k, v in (ready or {}).items()}
    demand_list = sorted(demands, key=lambda d: d.key)
    by_key = {d.key: d for d in demand_list}
    desired = {w: set() for w in live}
    used = dict.fromkeys(live, 0)
    cpu = {wid: w.cpu_used or 0.0 for wid, w in live.items()}
    holders_now = {}
    for worker_id, keys in current.items():
        for key in keys:
            holders_now.setdefault(key, []).append(worker_id)
    extra = dict.fromkeys(live, 0.0)
    for wid, wk in live.items():
        now = [by_key[k] for k in current.get(wid, ()) if k in by_key]
        if wk.memory_used_mb is not None:
            extra[wid] = max(wk.memory_used_mb - sum(dm.memory_mb for dm in now), 0.0)
        cpu[wid] = max(cpu[wid] - sum(dm.cpu for dm in now), 0.0)

    def matches(w, d):
        return w.backend == d.backend and all(
            w.labels.get(k) == v for k, v in d.constraints.items()
        )

    def assign(worker_id, key):
        desired[worker_id].add(key)
        used[worker_id] += by_key[key].memory_mb if key in by_key else 0
        cpu[worker_id] += by_key[key].cpu if key in by_key else 0.0

    def load(w):
        mem_cap, cpu_cap = w.capacity_memory_mb, w.capacity_cpu
        memory = (used[w.worker_id] + extra[w.worker_id]) / mem_cap if mem_cap else 0.0
        return max(memory, cpu[w.worker_id] / cpu_cap if cpu_cap else 0.0)

    surplus = []
    for d in demand_list:
        keep = [
            live[w]
            for w in holders_now.get(d.key, [])
            if w in live and not live[w].draining and d.key not in live[w].avoid
        ]
        keep = [w for w in keep if matches(w, d)]
        if len(keep) > d.replicas:
            surplus.append((d, keep))
            continue
        for w in keep:
            assign(w.worker_id, d.key)
    for d, keep in surplus:
        order = sorted(keep, key=lambda w: (w.cordoned, load(w), w.worker_id))
        ready_here = ready_on.get(d.key, set())
        kept = order[: d.replicas]
        ready_all = sum(w.worker_id in ready_here for w in keep)
        while sum(w.worker_id in ready_here for w in kept) < min(d.replicas, ready_all):
            kept.append(next(w for w in order if w not in kept and w.worker_id in ready_here))
        for w in kept:
            assign(w.worker_id, d.key)

    def load_key(w, model):
        same = sum(1 for m, _ in desired[w.worker_id] if m == model)
        return (load(w), len(desired[w.worker_id]), same, w.worker_id)

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
                and d.key not in w.avoid
                and (
                    w.capacity_memory_mb is None
                    or used[w.worker_id] + extra[w.worker_id] + d.memory_mb <= w.capacity_memory_mb
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
    keys = [(f"m{i % 7}", 1 + i // 7) for i in range(25)]
    workers = []
    for i in range(rnd.randint(1, 12)):
        capacity = rnd.choice([None, 300, 1000])
        workers.append(
            w(
                f"w{i}",
                rnd.choice(["triton", "triton", "tfserving"]),
                labels=rnd.choice([{}, {"zone": "a"}, {"zone": "b", "gpu": "true"}]),
                capacity_memory_mb=capacity,
                ready=rnd.random() > 0.1,
                cordoned=rnd.random() < 0.15,
                draining=rnd.random() < 0.1,
                capacity_cpu=rnd.choice([None, 2.0, 8.0]),
                cpu_used=rnd.choice([None, 0.5, 1.5]),
                memory_used_mb=rnd.choice([None, 100.0, 600.0]) if capacity else None,
                avoid=frozenset(rnd.sample(keys, rnd.choice([0, 0, 1, 2]))),
            )
        )
    demands = [
        d(
            f"m{i % 7}",
            version=1 + i // 7,
            replicas=rnd.randint(1, 4),
            backend=rnd.choice(["triton", "triton", "tfserving"]),
            constraints=rnd.choice([{}, {}, {"zone": "a"}, {"gpu": "true"}]),
            memory_mb=rnd.choice([0, 0, 50, 200]),
            cpu=rnd.choice([0.0, 0.25]),
        )
        for i in range(rnd.randint(1, 25))
    ]
    keys = [dm.key for dm in demands] + [("gone", 1)]
    current = {
        wk.worker_id: set(rnd.sample(keys, rnd.randint(0, min(4, len(keys)))))
        for wk in [*workers, w("dead")]
    }
    ready = {k: {wk.worker_id for wk in workers if rnd.random() < 0.3} for k in keys}
    plan = place(demands, workers, current, ready=ready, rebalance_drift=None)
    desired, short = reference_place(demands, workers, current, ready=ready)
    assert plan.desired == desired
    assert set(plan.shortfalls) == short


def test_most_headroom_first_by_measured_cpu_and_memory():
    workers = [
        w("busy-cpu", capacity_cpu=4.0, cpu_used=3.0, capacity_memory_mb=1000),
        w("busy-memory", capacity_memory_mb=1000, memory_used_mb=700.0),
        w("calm", capacity_cpu=4.0, cpu_used=1.0, capacity_memory_mb=1000, memory_used_mb=200.0),
    ]
    assert place([d()], workers, {}).holders(("m", 1)) == {"calm"}
    # the second replica goes where the larger share is smaller: 70 % memory < 75 % CPU
    assert place([d(replicas=2)], workers, {}).holders(("m", 1)) == {"calm", "busy-memory"}


def test_measured_memory_beats_declared_when_it_is_more():
    # 100 MiB declared on a, but its server was measured at 900 of 1000 MiB
    workers = [
        w("a", capacity_memory_mb=1000, memory_used_mb=900.0),
        w("b", capacity_memory_mb=1000),
    ]
    current = {"a": {("x", 1)}, "b": {("y", 1)}, "c": set()}
    demands = [d("x", memory_mb=100), d("y", memory_mb=300), d("m", memory_mb=150)]
    plan = place(demands, workers, current)
    assert plan.holders(("m", 1)) == {"b"}  # a has 100 MiB free, not 900
    short = place([*demands[:2], d("m", replicas=2, memory_mb=150)], workers, current)
    assert short.holders(("m", 1)) == {"b"}
    assert short.shortfalls[("m", 1)].memory_bound
    # measured less than declared: the declared sizes count
    low = [w("a", capacity_memory_mb=1000, memory_used_mb=10.0), w("b", capacity_memory_mb=1000)]
    plan = place([d("x", memory_mb=950), d("m", memory_mb=100)], low, {"a": {("x", 1)}})
    assert plan.holders(("m", 1)) == {"b"}


def test_a_copy_that_ran_a_worker_out_of_memory_goes_elsewhere():
    workers = [w("a", avoid=frozenset({("m", 1)})), w("b", cpu_used=1.0, capacity_cpu=2.0)]
    # never placed there, even though a has more headroom; an existing assignment moves
    assert place([d()], workers, {}).holders(("m", 1)) == {"b"}
    assert place([d()], workers, {"a": {("m", 1)}}).desired == {"b": {("m", 1)}}
    # another version of the model is fine there
    assert place([d(version=2)], workers, {}).holders(("m", 2)) == {"a"}
    short = place([d(replicas=2)], workers, {}).shortfalls[("m", 1)]
    assert str(short) == (
        "1/2 placed: the model server on a ran out of memory with m@1 loaded "
        "(not placed there again)"
    )
    assert not short.memory_bound


def test_memory_bound_only_when_memory_alone_stopped_it():
    full = [w("a", capacity_memory_mb=100), w("b", capacity_memory_mb=100)]
    short = place([d(memory_mb=200)], full, {}).shortfalls[("m", 1)]
    assert short.memory_bound
    assert (
        short.reason
        == "not enough free memory for 200 MiB per replica on the 2 remaining triton worker(s)"
    )
    # one worker full, the other avoided: evicting on the full one would make room
    mixed = [w("a", capacity_memory_mb=100), w("b", avoid=frozenset({("m", 1)}))]
    short = place([d(memory_mb=200)], mixed, {}).shortfalls[("m", 1)]
    assert short.memory_bound
    assert short.reason.endswith(
        "; the model server on b ran out of memory with m@1 loaded (not placed there again)"
    )
    for reason_not_memory in (
        place([d(replicas=3)], [w("a"), w("b")], {}),
        place([d(constraints={"zone": "x"})], full, {}),
        place([d()], [w("a", cordoned=True)], {}),
    ):
        assert not reason_not_memory.shortfalls[("m", 1)].memory_bound


def drifted(a_cpu: float) -> list[WorkerView]:
    return [
        w("a", capacity_cpu=4.0, cpu_used=a_cpu, capacity_memory_mb=1000, memory_used_mb=100.0),
        w("b", capacity_cpu=4.0, cpu_used=0.4, capacity_memory_mb=1000, memory_used_mb=100.0),
    ]


def test_rebalance_adds_on_the_least_loaded_then_removes_once_ready():
    demands = [d("x", cpu=0.8), d("y", cpu=0.4), d("z")]
    current = {"a": {("x", 1), ("y", 1)}, "b": {("z", 1)}}
    ready = {("x", 1): {"a"}, ("y", 1): {"a"}, ("z", 1): {"b"}}
    # a is at 90 % CPU, b at 10 %: x (the move that lowers a most without making b the
    # busier one) is added on b first, nothing is removed
    plan = place(demands, drifted(3.6), current, ready=ready)
    assert plan.desired == {"a": {("x", 1), ("y", 1)}, "b": {("x", 1), ("z", 1)}}
    # while x loads on b, a keeps it and no other move starts
    moving = place(demands, drifted(3.6), plan.desired, ready=ready)
    assert moving.desired == plan.desired
    # once x is READY on b, a's copy goes
    ready[("x", 1)] = {"a", "b"}
    done = place(demands, drifted(3.6), plan.desired, ready=ready)
    assert done.desired == {"a": {("y", 1)}, "b": {("x", 1), ("z", 1)}}


def test_no_rebalance_below_the_drift_or_when_a_move_would_invert_it():
    demands = [d("x", cpu=0.8), d("z")]
    current = {"a": {("x", 1)}, "b": {("z", 1)}}
    ready = {("x", 1): {"a"}, ("z", 1): {"b"}}
    assert place(demands, drifted(1.2), current, ready=ready).desired == current  # 30 % vs 10 %
    # a at 90 %, but its only copy uses 3 cores: moving it would leave b the busier one
    hot = [d("x", cpu=3.0), d("z")]
    assert place(hot, drifted(3.6), current, ready=ready).desired == current
    # not while the copy is still loading (not READY) on the busy worker
    assert place(demands, drifted(3.6), current, ready={("z", 1): {"b"}}).desired == current
    assert (
        place(demands, drifted(3.6), current, ready=ready, rebalance_drift=None).desired == current
    )
