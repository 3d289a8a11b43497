"""The autoscaler's decisions (manager_api/autoscale.py ``decide``): pure, from a cluster state
built node by node as the manager's view builds it, load samples and a clock; and its driver
on the reconcile leader of a manager app, against a real ZooKeeper."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from manager_api.app import create_app
from manager_api.autoscale import Plan, Policy, decide
from manager_api.load import LoadSample, ModelLoad
from manager_api.placement import Shortfall
from manager_api.state import ClusterState
from registry import Registry, layout
from registry.records import (
    Assignment,
    Autoscale,
    Model,
    ModelVersion,
    Record,
    Scale,
    Usage,
    Wake,
    Worker,
)
from tests.manager_api.conftest import auth, settings_for, token_store
from tests.servers.zk import wait_for

NOW = 100_000.0
POLICY = Policy(up_cooldown_s=10.0, down_window_s=60.0, evict_idle_s=30.0, fresh_s=15.0)


def put(state: ClusterState, path: str, record: Record) -> None:
    state.apply(path, record.to_bytes(path))


def autoscaled(
    state: ClusterState,
    name: str,
    *,
    replicas: int | None = None,
    changed: float = NOW - 1000,
    last_call: float | None = None,
    memory_mb: int = 0,
    pinned: bool = False,
    **auto: object,
) -> None:
    """An autoscaled model with version 1; ``replicas``: the leader chose that count."""
    bounds = {"min_replicas": 1, "max_replicas": 5, "target_in_flight": 1.0, **auto}
    put(
        state,
        layout.model(name),
        Model(
            name=name,
            backend="triton",
            autoscale=Autoscale.model_validate(bounds),
            memory_mb=memory_mb,
            pinned=pinned,
        ),
    )
    put(state, layout.version(name, 1), ModelVersion(version=1, artifact_uri=f"file:///{name}"))
    if replicas is not None:
        put(
            state,
            layout.scale(name),
            Scale(model=name, replicas=replicas, reason="t", changed=changed, last_call=last_call),
        )


def sample(at: float, in_flight: float = 0.0, calls_per_s: float | None = None) -> LoadSample:
    calls = calls_per_s if calls_per_s is not None else (10.0 if in_flight else 0.0)
    return LoadSample(
        time=at, calls_per_s=calls, in_flight=in_flight, error_rate=0.0, p50_s=None, p99_s=None
    )


def load(name: str, *samples: LoadSample) -> dict[str, ModelLoad]:
    last = max((s.time for s in samples if s.calls_per_s > 0), default=None)
    return {name: ModelLoad(model=name, samples=list(samples), last_call=last)}


def run(
    state: ClusterState,
    loads: dict[str, ModelLoad] | None = None,
    shortfalls: dict | None = None,
    **kw: object,
) -> Plan:
    names = {n for n, m in state.models.items() if m.autoscale is not None}
    return decide(state, names, loads or {}, shortfalls or {}, NOW, POLICY, **kw)


def replicas(plan: Plan) -> dict[str, int]:
    return {name: d.scale.replicas for name, d in plan.decisions.items()}


# -- by load -----------------------------------------------------------------------------


def test_a_model_without_a_choice_starts_from_its_replicas_within_the_bounds() -> None:
    state = ClusterState()
    autoscaled(state, "m", min_replicas=2, max_replicas=4)

    plan = run(state)

    assert replicas(plan) == {"m": 2}  # replicas 1, raised to min_replicas
    assert plan.decisions["m"].direction == "start"
    assert plan.decisions["m"].scale.reason == "autoscaling starts from 2 replica(s)"


def test_up_to_the_replicas_the_newest_load_needs() -> None:
    state = ClusterState()
    autoscaled(state, "m", replicas=1)

    plan = run(state, load("m", sample(NOW - 5, in_flight=0.4), sample(NOW - 1, in_flight=2.7)))

    decision = plan.decisions["m"]
    assert (decision.previous, decision.scale.replicas, decision.direction) == (1, 3, "up")
    assert decision.scale.reason == "in flight 2.70 over 1 replica(s), target 1 per replica"
    assert decision.scale.changed == NOW and decision.scale.last_call == NOW - 1


def test_up_waits_for_the_cooldown_after_the_last_scaling() -> None:
    state = ClusterState()
    autoscaled(state, "m", replicas=1, changed=NOW - 5)

    assert run(state, load("m", sample(NOW - 1, in_flight=3.0))).decisions == {}


def test_up_is_bounded_by_max_replicas_and_a_calls_per_second_target_works_alike() -> None:
    state = ClusterState()
    autoscaled(state, "inflight", replicas=1, max_replicas=3)
    autoscaled(state, "rate", replicas=1, target_in_flight=None, target_calls_per_s=10.0)
    loads = load("inflight", sample(NOW - 1, in_flight=40.0)) | load(
        "rate", sample(NOW - 1, calls_per_s=25.0)
    )

    plan = run(state, loads)

    assert replicas(plan) == {"inflight": 3, "rate": 3}
    assert plan.decisions["rate"].scale.reason.startswith("calls/s 25.00 over 1 replica(s)")


def test_a_need_within_the_tolerance_keeps_the_count() -> None:
    state = ClusterState()
    autoscaled(state, "m", replicas=2)

    assert run(state, load("m", sample(NOW - 1, in_flight=2.15))).decisions == {}
    assert replicas(run(state, load("m", sample(NOW - 1, in_flight=2.3)))) == {"m": 3}


def test_a_steady_load_a_little_over_a_whole_number_needs_that_number() -> None:
    state = ClusterState()
    autoscaled(state, "m", replicas=1)  # 2 callers back to back measure 2.1 in flight, not 3

    assert replicas(run(state, load("m", sample(NOW - 1, in_flight=2.1)))) == {"m": 2}
    assert replicas(run(state, load("m", sample(NOW - 1, in_flight=2.3)))) == {"m": 3}


def test_down_only_to_the_highest_need_of_the_stabilisation_window() -> None:
    state = ClusterState()
    autoscaled(state, "m", replicas=3)
    busy_in_window = load("m", sample(NOW - 50, in_flight=2.9), sample(NOW - 1, in_flight=0.2))
    peak_in_window = load("m", sample(NOW - 50, in_flight=1.8), sample(NOW - 1, in_flight=0.2))
    busy_before = load("m", sample(NOW - 70, in_flight=3.0), sample(NOW - 1, in_flight=0.2))

    assert run(state, busy_in_window).decisions == {}  # 3 were needed 50 s ago: not yet
    assert replicas(run(state, peak_in_window)) == {"m": 2}
    plan = run(state, busy_before)
    assert replicas(plan) == {"m": 1} and plan.decisions["m"].direction == "down"
    assert plan.decisions["m"].scale.reason == (
        "in flight at most 0.20 over the last 60s, target 1 per replica"
    )


def test_no_down_within_the_window_after_the_last_scaling_nor_while_load_is_unknown() -> None:
    state = ClusterState()
    autoscaled(state, "recent", replicas=3, changed=NOW - 30)
    autoscaled(state, "quiet", replicas=3)
    loads = load("recent", sample(NOW - 1, in_flight=0.1)) | load(
        "quiet", sample(NOW - 1, in_flight=0.1)
    )

    assert replicas(run(state, loads)) == {"quiet": 1}
    assert run(state, loads, load_known=False).decisions == {}


def test_without_load_a_model_goes_down_to_min_replicas_after_the_window() -> None:
    state = ClusterState()
    autoscaled(state, "m", replicas=4, min_replicas=2)
    autoscaled(state, "stale", replicas=4, min_replicas=2)

    loads = load("stale", sample(NOW - 100, in_flight=4.0))  # too old to be the current load
    assert replicas(run(state, loads)) == {"m": 2, "stale": 2}


def test_a_count_outside_new_bounds_is_brought_within_them_at_once() -> None:
    state = ClusterState()
    autoscaled(state, "m", replicas=5, changed=NOW - 1, max_replicas=3)

    plan = run(state)

    assert replicas(plan) == {"m": 3} and plan.decisions["m"].direction == "bounds"
    assert plan.decisions["m"].scale.reason == "bounds are 1..3"


# -- scale to zero -------------------------------------------------------------------------


def test_idle_for_idle_seconds_goes_to_zero_only_with_min_replicas_zero() -> None:
    state = ClusterState()
    autoscaled(state, "idle", replicas=1, min_replicas=0, idle_seconds=300, last_call=NOW - 400)
    autoscaled(state, "recent", replicas=1, min_replicas=0, idle_seconds=300, last_call=NOW - 100)
    autoscaled(state, "kept", replicas=1, min_replicas=1, idle_seconds=300, last_call=NOW - 400)
    autoscaled(state, "woke", replicas=1, min_replicas=0, idle_seconds=300, changed=NOW - 200)

    plan = run(state)

    assert replicas(plan) == {"idle": 0}
    assert plan.decisions["idle"].direction == "idle"
    assert plan.decisions["idle"].scale.reason == "no call for 400s (idle_seconds 300)"


def test_the_load_tracker_last_call_counts_and_unknown_load_keeps_the_replicas() -> None:
    state = ClusterState()
    autoscaled(state, "m", replicas=1, min_replicas=0, idle_seconds=300, last_call=NOW - 400)

    assert run(state, load("m", sample(NOW - 200, in_flight=0.5))).decisions == {}
    assert run(state, load_known=False).decisions == {}


def test_a_wake_scales_up_at_once_names_the_gateway_and_is_deleted() -> None:
    state = ClusterState()
    autoscaled(state, "cold", replicas=0, changed=NOW - 1, min_replicas=0, max_replicas=3)
    put(state, layout.wake("cold"), Wake(model="cold", gateway_id="gw-1", at=NOW - 2, waiting=4))

    plan = run(state)

    decision = plan.decisions["cold"]
    assert (decision.previous, decision.scale.replicas, decision.direction) == (0, 1, "wake")
    assert decision.scale.reason == "woken by gateway gw-1: 4 call(s) waiting"
    assert decision.scale.last_call == NOW - 2
    assert plan.woken == {"cold"}


def test_a_wake_of_a_model_with_replicas_or_of_no_autoscaled_model_is_only_deleted() -> None:
    state = ClusterState()
    autoscaled(state, "warm", replicas=2)
    put(state, layout.model("fixed"), Model(name="fixed", backend="triton"))
    for name in ("warm", "fixed", "gone"):
        put(state, layout.wake(name), Wake(model=name, gateway_id="gw-1", at=NOW))

    plan = run(state)

    assert plan.decisions == {} and plan.woken == {"warm", "fixed", "gone"}


def test_the_choice_of_a_model_no_longer_autoscaled_is_deleted() -> None:
    state = ClusterState()
    put(state, layout.model("fixed"), Model(name="fixed", backend="triton"))
    put(state, layout.scale("fixed"), Scale(model="fixed", replicas=3, reason="t"))
    put(state, layout.scale("gone"), Scale(model="gone", replicas=3, reason="t"))

    assert run(state).stale == {"fixed", "gone"}


# -- eviction ------------------------------------------------------------------------------


def fleet(
    state: ClusterState,
    holds: dict[str, list[str]],
    capacity_mb: int = 100,
    measured_mb: dict[str, float] | None = None,
) -> None:
    """Workers of ``capacity_mb`` holding version 1 of the given models; ``measured_mb``: the
    memory some workers' model servers were measured to use."""
    for wid, names in holds.items():
        used = (measured_mb or {}).get(wid)
        put(
            state,
            layout.worker(wid),
            Worker(worker_id=wid, host="h", backend="triton", address="h:1",
                   capacity_memory_mb=capacity_mb,
                   usage=Usage(cpu=0.1, memory_mb=used) if used is not None else None),
        )  # fmt: skip
        for name in names:
            put(
                state,
                layout.assignment(wid, name, 1),
                Assignment(model=name, version=1, backend="triton", artifact_uri=f"file:///{name}"),
            )


def density(
    state: ClusterState, new_memory_mb: int = 40, measured_mb: dict[str, float] | None = None
) -> dict:
    """a, b on w1 and c, d on w2 (40 MiB each, min_replicas 0, idle); ``e`` woken and short
    of memory. Least recently used: b, then c, then a, then d."""
    for name, last in (("a", NOW - 100), ("b", NOW - 500), ("c", NOW - 300), ("d", NOW - 50)):
        autoscaled(
            state, name, replicas=1, min_replicas=0, memory_mb=40, last_call=last, idle_seconds=3600
        )
    autoscaled(state, "e", replicas=1, changed=NOW - 1, min_replicas=0, memory_mb=new_memory_mb)
    fleet(state, {"w1": ["a", "b"], "w2": ["c", "d"]}, measured_mb=measured_mb)
    return {("e", 1): Shortfall(0, 1, "not enough free memory", memory_bound=True)}


def test_the_least_recently_used_idle_copy_makes_room() -> None:
    state = ClusterState()
    short = density(state)

    plan = run(state, shortfalls=short)

    assert replicas(plan) == {"b": 0}
    decision = plan.decisions["b"]
    assert decision.direction == "evict" and decision.previous == 1
    assert decision.scale.reason == (
        "evicted to make room for e@1 (least recently used, idle 500s)"
    )
    assert plan.made_room == {"e"}


def test_only_the_least_recently_used_copies_needed_are_evicted() -> None:
    state = ClusterState()
    short = density(state, new_memory_mb=70)  # needs a whole worker: a and b (w1), not c

    assert replicas(run(state, shortfalls=short)) == {"b": 0, "a": 0}


def test_memory_measured_beyond_the_copies_sizes_counts_as_placement_counts_it() -> None:
    declared = ClusterState()
    measured = ClusterState()
    short = density(declared, new_memory_mb=50)
    density(measured, new_memory_mb=50, measured_mb={"w1": 100.0})

    # w1's server uses all of its 100 MiB: b (the least recently used) alone frees 40 there,
    # too little for 50; c on w2 frees enough alone
    assert replicas(run(declared, shortfalls=short)) == {"b": 0}
    assert replicas(run(measured, shortfalls=short)) == {"c": 0}


def test_never_evicted_pinned_with_traffic_with_min_replicas_or_when_it_would_not_fit() -> None:
    state = ClusterState()
    idle = {"replicas": 1, "memory_mb": 40, "idle_seconds": 3600}
    autoscaled(state, "pinned", min_replicas=0, pinned=True, **idle)
    autoscaled(state, "busy", min_replicas=0, **idle)
    autoscaled(state, "floor", min_replicas=1, **idle)
    put(state, layout.model("fixed"), Model(name="fixed", backend="triton", memory_mb=40))
    autoscaled(state, "e", replicas=1, changed=NOW - 1, min_replicas=0, memory_mb=40)
    fleet(state, {"w1": ["pinned", "busy"], "w2": ["floor", "fixed"]})
    short = {("e", 1): Shortfall(0, 1, "not enough free memory", memory_bound=True)}
    traffic = load("busy", sample(NOW - 1, in_flight=0.5))

    plan = run(state, traffic, shortfalls=short)

    assert plan.decisions == {} and plan.made_room == set()

    too_big = ClusterState()
    assert run(too_big, shortfalls=density(too_big, new_memory_mb=150)).decisions == {}


def test_a_shortfall_not_only_for_memory_evicts_nothing() -> None:
    state = ClusterState()
    short = density(state)
    short[("e", 1)] = Shortfall(0, 1, "no triton worker with label zone=x")

    assert run(state, shortfalls=short).decisions == {}


def test_a_copy_going_idle_in_the_same_tick_makes_the_room_and_nothing_is_evicted() -> None:
    state = ClusterState()
    short = density(state)
    autoscaled(state, "b", replicas=1, min_replicas=0, memory_mb=40, last_call=NOW - 500)

    plan = run(state, shortfalls=short)

    assert replicas(plan) == {"b": 0} and plan.decisions["b"].direction == "idle"
    assert plan.made_room == {"e"}


# -- the driver on the reconcile leader (real ZooKeeper, simulated workers) ----------------


def test_the_leader_wakes_a_model_places_it_and_records_why(
    zookeeper, zk_root, registry: Registry, sim_workers, tmp_path: Path
) -> None:
    sim_workers("w1")
    settings = settings_for(
        zookeeper, zk_root, tmp_path, reconcile_interval_s=0.2, autoscale_interval_s=0.2
    )
    app = create_app(settings, registry, tokens=token_store(), start_reconciler=True)
    with TestClient(app) as client:
        auto = Autoscale(min_replicas=0, max_replicas=2, idle_seconds=600)
        registry.put(layout.model("cold"), Model(name="cold", backend="triton", replicas=0,
                                                 autoscale=auto))  # fmt: skip
        registry.put(layout.version("cold", 1), ModelVersion(version=1, artifact_uri="file:///c"))
        start = wait_for(lambda: registry.read(layout.scale("cold"), Scale), what="a choice")
        assert start.replicas == 0 and registry.children(layout.assignments("w1")) == []

        registry.put(layout.wake("cold"), Wake(model="cold", gateway_id="gw-7", waiting=2))

        wait_for(
            lambda: registry.children(layout.assignments("w1")) == ["cold@1"],
            what="the woken model placed",
        )
        scale = registry.read(layout.scale("cold"), Scale)
        assert scale is not None and scale.replicas == 1
        assert scale.reason == "woken by gateway gw-7: 2 call(s) waiting"
        wait_for(lambda: not registry.exists(layout.wake("cold")), what="the wake deleted")
        audit = client.get("/v1/audit", headers=auth("admin")).raise_for_status().json()
        mine = [(e["who"], e["action"], e["target"]) for e in audit if e["who"] == "autoscaler"]
        assert mine == [
            ("autoscaler", "autoscale start 0 -> 0: autoscaling starts from 0 replica(s)",
             "/v1/models/cold"),
            ("autoscaler", "autoscale wake 0 -> 1: woken by gateway gw-7: 2 call(s) waiting",
             "/v1/models/cold"),
        ]  # fmt: skip
        metrics = client.get("/metrics").text
        assert 'modelgate_manager_autoscale_decisions_total{direction="wake"} 1.0' in metrics
        assert 'modelgate_manager_autoscale_replicas{model="cold"} 1.0' in metrics
