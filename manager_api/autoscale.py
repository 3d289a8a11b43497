"""Autoscaling, scale to zero and eviction: the replica count the reconcile leader chooses
for each model with ``autoscale``, kept in ``/scale/<model>`` with a reason.

:func:`decide` is pure (cluster state + load samples + now -> new ``Scale`` records):

- **by load**: a sample needs ``load / target`` replicas (average calls in flight or calls per
  second, per replica), rounded up (a replica may carry :data:`TOLERANCE` over its target) and
  held within ``[max(min_replicas, 1), max_replicas]``;
  a need within :data:`TOLERANCE` of the current count keeps it. Up as soon as the newest
  sample needs more (not within ``up_cooldown_s`` of the model's last scaling); down only to
  the most that any sample of the last ``down_window_s`` needed, and not within that window
  of the last scaling (Kubernetes HPA's stabilisation window). Placement adds the new
  replicas before it removes surplus ones (make-before-break).
- **scale to zero**: ``min_replicas`` 0 and no call for ``idle_seconds`` -> 0; a ``/wake``
  node (a gateway holds calls) -> at least 1 at once, and the node is deleted.
- **eviction**: a model short of replicas only for memory (``Shortfall.memory_bound``) gets
  room by scaling the least recently used idle models to zero (``min_replicas`` 0, not
  pinned, no call for ``evict_idle_s``), the fewest that make it fit; if no such set makes it
  fit, nothing is evicted.

Free memory here is what placement counts: a worker's capacity minus the larger of the
sizes of the copies assigned to it (a copy's size: the larger of declared and measured,
``ClusterState.memory_of``) and the memory its model server was measured to use.

:class:`Autoscaler` drives it from the reconcile leader's thread (never the API's): a tick
every ``interval_s``, and at the next pass when a gateway asks for a wake or a model became
short of memory. A tick costs O(autoscaled models + wakes + workers), and writes only the
models whose count changes (one pipelined batch), each with an audit entry and a metric.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from manager_api.auth import AuditLog
from manager_api.load import LoadSample, LoadTracker, ModelLoad
from manager_api.metrics import ManagerMetrics
from manager_api.placement import Key, Shortfall
from manager_api.settings import ManagerSettings
from manager_api.state import ClusterState, ClusterView, start_replicas
from registry import Registry, layout
from registry.records import Autoscale, Model, Record, Scale

log = logging.getLogger("manager_api.autoscale")

Direction = Literal["start", "up", "down", "wake", "idle", "evict", "bounds"]
#: A need within this share of the current count keeps the count (no flapping on noise).
TOLERANCE = 0.1
#: The audit log's actor for the autoscaler's decisions.
ACTOR = "autoscaler"


@dataclass(frozen=True)
class Policy:
    """The autoscaler's timing (from :class:`ManagerSettings`)."""

    up_cooldown_s: float
    down_window_s: float
    evict_idle_s: float
    #: A sample older than this is not the current load (its gateway is gone).
    fresh_s: float

    @classmethod
    def of(cls, settings: ManagerSettings) -> Policy:
        return cls(
            up_cooldown_s=settings.autoscale_up_cooldown_s,
            down_window_s=settings.autoscale_down_window_s,
            evict_idle_s=settings.evict_idle_s,
            fresh_s=3 * settings.load_interval_s,
        )


@dataclass(frozen=True)
class Decision:
    """A new replica count for one model, and the ``Scale`` record that says why."""

    scale: Scale
    previous: int
    direction: Direction


@dataclass
class Plan:
    """One tick's outcome."""

    decisions: dict[str, Decision] = field(default_factory=dict)
    #: ``/wake`` nodes handled (or of models that are gone): to delete.
    woken: set[str] = field(default_factory=set)
    #: ``/scale`` nodes of models that are gone or no longer autoscaled: to delete.
    stale: set[str] = field(default_factory=set)
    #: Models short of memory that evictions made room for: to place again.
    made_room: set[str] = field(default_factory=set)


def load_of(auto: Autoscale, sample: LoadSample) -> float:
    """The figure of ``sample`` that ``auto``'s target is set in."""
    return sample.in_flight if auto.target_in_flight is not None else sample.calls_per_s


def replicas_for(auto: Autoscale, needed: float, current: int) -> int:
    """``needed`` rounded up within the bounds (at least one), each replica allowed
    :data:`TOLERANCE` over its target, or ``current`` when ``needed`` is within
    :data:`TOLERANCE` of it."""
    if current > 0 and abs(needed / current - 1) <= TOLERANCE:
        wanted = current
    else:
        # NOTE: a replica may carry up to TOLERANCE over its target: a steady load of 2 calls
        # in flight measures 2.1 one interval and 1.9 the next, and needs 2 replicas, not 3
        wanted = math.ceil(needed / (1 + TOLERANCE))
    return min(max(wanted, auto.min_replicas, 1), auto.max_replicas)


def _last_call(scale: Scale | None, load: ModelLoad | None, wake_at: float | None) -> float | None:
    seen = [t for t in (scale and scale.last_call, load and load.last_call, wake_at) if t]
    return max(seen) if seen else None


def _by_load(
    auto: Autoscale,
    current: int,
    since_change: float,
    samples: list[LoadSample],
    now: float,
    policy: Policy,
    load_known: bool,
) -> tuple[int, Direction, str] | None:
    """An up or down by the load samples of a model with replicas, or None."""
    target = auto.target_in_flight or auto.target_calls_per_s
    if target is None:
        return None
    figure = "in flight" if auto.target_in_flight is not None else "calls/s"
    newest = samples[-1] if samples and samples[-1].time >= now - policy.fresh_s else None
    load = load_of(auto, newest) if newest is not None else 0.0
    wanted = replicas_for(auto, load / target, current)
    if wanted > current:
        if since_change < policy.up_cooldown_s:
            return None
        why = f"{figure} {load:.2f} over {current} replica(s), target {target:g} per replica"
        return wanted, "up", why
    if wanted >= current or not load_known or since_change < policy.down_window_s:
        return None
    cutoff = now - policy.down_window_s
    window = itertools.takewhile(lambda s: s.time > cutoff, reversed(samples))
    peak = max([load, *(load_of(auto, s) for s in window)])
    highest = replicas_for(auto, peak / target, current)
    if highest >= current:
        return None
    why = (
        f"{figure} at most {peak:.2f} over the last {policy.down_window_s:g}s, target "
        f"{target:g} per replica"
    )
    return highest, "down", why


def _decide_model(
    model: Model,
    auto: Autoscale,
    state: ClusterState,
    load: ModelLoad | None,
    now: float,
    policy: Policy,
    load_known: bool,
) -> Decision | None:
    scale = state.scales.get(model.name)
    wake = state.wakes.get(model.name)
    current = scale.replicas if scale is not None else start_replicas(model)
    changed = scale.changed if scale is not None else now
    last_call = _last_call(scale, load, wake.at if wake else None)
    samples = load.samples if load is not None else []
    fresh_calls = any(s.calls_per_s > 0 for s in samples if s.time >= now - policy.fresh_s)

    choice: tuple[int, Direction, str] | None = None
    if not auto.min_replicas <= current <= auto.max_replicas:
        bounded = min(max(current, auto.min_replicas), auto.max_replicas)
        choice = (bounded, "bounds", f"bounds are {auto.min_replicas}..{auto.max_replicas}")
    elif current == 0 and wake is not None:
        why = f"woken by gateway {wake.gateway_id}: {wake.waiting} call(s) waiting"
        choice = (max(1, start_replicas(model)), "wake", why)
    elif wake is not None:
        return None  # calls are held for it: neither idle nor over-provisioned
    elif current > 0 and auto.min_replicas == 0 and load_known and not fresh_calls:
        quiet_since = max(last_call or 0.0, changed)
        if now - quiet_since >= auto.idle_seconds:
            why = (
                f"no call for {now - last_call:.0f}s"
                if last_call is not None
                else f"no call seen in {now - changed:.0f}s"
            )
            choice = (0, "idle", f"{why} (idle_seconds {auto.idle_seconds:g})")
    if choice is None and current > 0:
        choice = _by_load(auto, current, now - changed, samples, now, policy, load_known)
    if choice is None and scale is None:
        choice = (current, "start", f"autoscaling starts from {current} replica(s)")
    if choice is None or (choice[0] == current and scale is not None):
        return None
    replicas, direction, reason = choice
    record = Scale(
        model=model.name, replicas=replicas, reason=reason, changed=now, last_call=last_call
    )
    return Decision(scale=record, previous=current, direction=direction)


def _last_used(
    state: ClusterState, name: str, plan: Plan, loads: Mapping[str, ModelLoad], now: float
) -> float:
    """The last call of a model, or when it was last scaled if later (a model just woken
    or started counts as used)."""
    decided = plan.decisions.get(name)
    scale = decided.scale if decided is not None else state.scales.get(name)
    if scale is None:
        return now
    return max(_last_call(scale, loads.get(name), None) or 0.0, scale.changed)


@dataclass(frozen=True)
class _Room:
    """Whether ``replicas`` copies of ``memory_mb`` fit, one per worker of ``workers``, once
    some models' copies are gone (``free``: MiB free per worker now)."""

    state: ClusterState
    free: Mapping[str, float]
    workers: list[str]
    memory_mb: int
    replicas: int

    def after(self, victims: Iterable[str]) -> dict[str, float]:
        room = dict(self.free)
        for name in victims:
            for wid, keys in self.state.assigned([name]).items():
                if wid in room:
                    room[wid] += len(keys) * self.state.memory_of(name)
        return room

    def fits(self, victims: Iterable[str]) -> bool:
        room = self.after(victims)
        return sum(room[w] >= self.memory_mb for w in self.workers) >= self.replicas


def _evict(
    state: ClusterState,
    autoscaled: Iterable[str],
    loads: Mapping[str, ModelLoad],
    shortfalls: Mapping[Key, Shortfall],
    plan: Plan,
    now: float,
    policy: Policy,
) -> None:
    """Add to ``plan`` the evictions that let the models short of memory fit."""

    def wanted(name: str) -> int:
        decided = plan.decisions.get(name)
        return decided.scale.replicas if decided else state.replicas_of(state.models[name])

    short = sorted(
        (key, s)
        for key, s in shortfalls.items()
        if s.memory_bound and key[0] in state.models and wanted(key[0]) > 0
    )
    if not short:
        return
    short_models = {key[0] for key, _ in short}
    candidates = sorted(
        (_last_used(state, name, plan, loads, now), name)
        for name in autoscaled
        if name in state.models
        and name not in short_models
        and name not in state.wakes
        and (auto := state.models[name].autoscale) is not None
        and auto.min_replicas == 0
        and not state.models[name].pinned
        and state.holders.get(name)
        and wanted(name) > 0
        and _last_used(state, name, plan, loads, now) <= now - policy.evict_idle_s
    )
    now_free = {
        wid: view.capacity_memory_mb
        - max(state.memory_used.get(wid, 0), view.memory_used_mb or 0.0)
        for wid, view in state.views.items()
        if view.usable and view.capacity_memory_mb is not None
    }
    going = [n for n, d in plan.decisions.items() if d.scale.replicas == 0 and d.previous > 0]
    free = _Room(state, now_free, [], 0, 0).after(going)
    evicted: dict[str, Key] = {}
    for key, shortfall in short:
        model = state.models[key[0]]
        holding = state.holders.get(key[0], {}).get(key[1], set())
        eligible = [
            wid
            for wid in free
            if (view := state.views[wid]).backend == model.backend
            and all(view.labels.get(k) == v for k, v in model.constraints.items())
            and wid not in holding
            and key not in view.avoid
        ]
        missing = shortfall.wanted - shortfall.placed

        room = _Room(state, free, eligible, state.memory_of(model.name), missing)
        # least recently used first until it fits, then keep the most recently used of those
        # that turn out not to be needed
        chosen: list[str] = []
        for _, name in candidates:
            if room.fits(chosen):
                break
            if name not in evicted and any(w in eligible for w in state.assigned([name])):
                chosen.append(name)
        if not room.fits(chosen):
            log.debug("%s@%d: evicting idle copies would not make it fit", *key)
            continue
        for name in reversed(chosen[:-1]):
            if room.fits([v for v in chosen if v != name]):
                chosen.remove(name)
        free = room.after(chosen)
        plan.made_room.add(key[0])
        for name in chosen:
            evicted[name] = key
    for name, key in evicted.items():
        previous = wanted(name)
        scale = state.scales.get(name)
        last_used = _last_used(state, name, plan, loads, now)
        plan.decisions[name] = Decision(
            scale=Scale(
                model=name,
                replicas=0,
                reason=f"evicted to make room for {key[0]}@{key[1]} (least recently used, "
                f"idle {now - last_used:.0f}s)",
                changed=now,
                last_call=_last_call(scale, loads.get(name), None),
            ),
            previous=previous,
            direction="evict",
        )


def decide(
    state: ClusterState,
    autoscaled: Iterable[str],
    loads: Mapping[str, ModelLoad],
    shortfalls: Mapping[Key, Shortfall],
    now: float,
    policy: Policy,
    *,
    load_known: bool = True,
) -> Plan:
    """The new replica counts of the models ``autoscaled`` (the names of models with
    ``autoscale``), the ``/wake`` and stale ``/scale`` nodes to delete, and the evictions for
    the models in ``shortfalls`` short only for memory.

    ``load_known`` False (a gateway could not be scraped): nothing is scaled down or idled,
    since the missing load may be what keeps the replicas busy.
    """
    plan = Plan()
    names = sorted(autoscaled)
    for name in names:
        model = state.models.get(name)
        if model is None or model.autoscale is None:
            continue
        decision = _decide_model(
            model, model.autoscale, state, loads.get(name), now, policy, load_known
        )
        if decision is not None:
            plan.decisions[name] = decision
    for name in state.wakes:
        model = state.models.get(name)
        # NOTE: a model at zero not yet tracked as autoscaled keeps its wake for a later tick;
        # one with replicas has its instance on the way.
        if model is None or model.autoscale is None or name in plan.decisions:
            plan.woken.add(name)
        elif state.replicas_of(model) > 0:
            plan.woken.add(name)
    for name in state.scales:
        model = state.models.get(name)
        if model is None or model.autoscale is None:
            plan.stale.add(name)
    _evict(state, names, loads, shortfalls, plan, now, policy)
    return plan


class Autoscaler:
    """Runs :func:`decide` on the reconcile leader's thread and writes what it decides.

    The reconciler tells it which models changed (:meth:`track`) so that it keeps the set of
    autoscaled models without walking the fleet, and calls :meth:`tick_if_due` before each
    pass.
    """

    def __init__(
        self,
        registry: Registry,
        metrics: ManagerMetrics,
        audit: AuditLog,
        tracker: Callable[[], LoadTracker],
        policy: Policy,
        interval_s: float,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.audit = audit
        self.tracker = tracker
        self.policy = policy
        self.interval_s = interval_s
        #: Names of the models with ``autoscale``.
        self.models: set[str] = set()
        self._next_tick = 0.0
        self._shortfalls_seen: frozenset[Key] = frozenset()

    def begin(self, view: ClusterView) -> None:
        """On becoming leader: index the autoscaled models and tick at the next pass."""
        with view.read() as state:
            self.track(state, list(state.models), every=True)
        self._next_tick = 0.0

    def track(self, state: ClusterState, names: Iterable[str], *, every: bool = False) -> None:
        """Take in the models ``names`` (changed); ``every``: ``names`` is the whole fleet."""
        names = set(names)
        autoscaled = {
            n for n in names if (m := state.models.get(n)) is not None and m.autoscale is not None
        }
        gone = (self.models if every else self.models & names) - autoscaled
        self.models = autoscaled if every else (self.models - gone) | autoscaled
        for name in gone:
            self.metrics.autoscale_replicas.remove(name)

    def due(self, state: ClusterState, shortfalls: Mapping[Key, Shortfall]) -> bool:
        """A tick is due: its interval passed, a gateway asks for a wake, or a model became
        short of memory since the last tick."""
        memory_bound = frozenset(k for k, s in shortfalls.items() if s.memory_bound)
        return (
            time.monotonic() >= self._next_tick
            or bool(state.wakes)
            or not memory_bound <= self._shortfalls_seen
        )

    def tick_if_due(self, view: ClusterView, shortfalls: Mapping[Key, Shortfall]) -> set[str]:
        """One tick if :meth:`due`: decide, write, wait until the view shows the writes.
        Returns the models short of memory that evictions made room for."""
        with view.read() as state:
            if not self.due(state, shortfalls):
                return set()
        started = time.monotonic()
        self._next_tick = started + self.interval_s
        self._shortfalls_seen = frozenset(k for k, s in shortfalls.items() if s.memory_bound)
        tracker = self.tracker()
        with view.read() as state:
            plan = decide(
                state,
                self.models,
                tracker.models(),
                shortfalls,
                time.time(),
                self.policy,
                load_known=not tracker.scrape_errors,
            )
        self._write(view, plan)
        with view.read() as state:
            for name in self.models:
                if (model := state.models.get(name)) is not None:
                    self.metrics.autoscale_replicas.labels(name).set(state.replicas_of(model))
        self.metrics.autoscale_seconds.observe(time.monotonic() - started)
        return plan.made_room

    def _write(self, view: ClusterView, plan: Plan) -> None:
        puts = {layout.scale(name): d.scale for name, d in plan.decisions.items()}
        deletes = [layout.wake(n) for n in sorted(plan.woken)]
        deletes += [layout.scale(n) for n in sorted(plan.stale)]
        if not puts and not deletes:
            return
        self.registry.write_many(puts, deletes)
        written: dict[str, Record | None] = {**puts, **dict.fromkeys(deletes)}
        if not view.wait_written(written, timeout=10.0):
            log.warning("the cluster view did not show the autoscaler's writes in time")
        for name, d in sorted(plan.decisions.items()):
            log.info(
                "%s: %d -> %d replicas (%s): %s",
                name,
                d.previous,
                d.scale.replicas,
                d.direction,
                d.scale.reason,
            )
            self.audit.record(
                who=ACTOR,
                role="internal",
                action=f"autoscale {d.direction} {d.previous} -> {d.scale.replicas}: "
                f"{d.scale.reason}",
                target=f"/v1/models/{name}",
                status=200,
            )
            self.metrics.autoscale_decisions.labels(d.direction).inc()
