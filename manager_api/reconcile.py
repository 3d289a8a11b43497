"""The reconcile loop: make ``/assignments`` match the placement of what ``/models`` wants.

Only the elected leader (kazoo Election at ``/manager/leader``) writes. A pass is
idempotent: it computes the placement of some models from a :class:`ClusterState`,
creates missing assignments first, then removes stale ones (so moves are
make-before-break), the writes of a pass pipelined in one batch.

The leader reads a :class:`ClusterView` (TreeCaches, no ZooKeeper reads). A steady pass
places only the models that changed since the last one: models whose records, versions,
assignments or routes changed, the models assigned to a worker that changed (joined, left,
cordoned, drained, relabelled), and, when a worker changed, the models short of replicas.
A full pass over every model runs when the manager becomes leader, after a failed pass or
a ZooKeeper reconnect, and every :data:`FULL_PASS_EVERY_S` as a safety net. Passes run on
every change of the view, when the API asks for one, and at least every ``interval``.

With an :class:`~manager_api.autoscale.Autoscaler`, the leader first lets it choose the
replica counts of autoscaled models (``/scale``) when a tick is due, then places; models it
evicted copies for are placed again in the same pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from manager_api.autoscale import Autoscaler
from manager_api.metrics import ManagerMetrics
from manager_api.placement import Key, Shortfall
from manager_api.state import Changes, ClusterState, ClusterView, read_state
from registry import Registry, layout
from registry.errors import ModelgateError
from registry.records import Assignment

log = logging.getLogger("manager_api.reconcile")

#: Seconds between two full passes. NOTE: a steady pass trusts that every change marked
#: what it affects; the full pass (O(fleet), planned on a copy of the view so reads are not
#: held up) bounds how long a change missed that way could stay unreconciled, at a CPU
#: cost of a few percent of one core at 10,000 models x 3 replicas.
FULL_PASS_EVERY_S = 60.0
#: Longest wait for the view to show the leader's own writes before the next pass, plus
#: :data:`WRITES_VISIBLE_PER_NODE_S` per node written. NOTE: a pass planned on a view that
#: misses the last pass's writes would place those replicas again (then remove the surplus);
#: a TreeCache takes in a few thousand new nodes a second, so a big first placement (30,000
#: assignments) needs longer than a handful of moves.
WRITES_VISIBLE_S = 10.0
WRITES_VISIBLE_PER_NODE_S = 0.002


@dataclass
class PassResult:
    """What one reconcile pass changed."""

    created: list[tuple[str, Key]] = field(default_factory=list)
    removed: list[tuple[str, Key]] = field(default_factory=list)
    shortfalls: dict[Key, Shortfall] = field(default_factory=dict)
    #: The writes: path -> the assignment to put there, or None to delete it.
    writes: dict[str, Assignment | None] = field(default_factory=dict)


def _assignment_for(state: ClusterState, key: Key) -> Assignment:
    model = state.models[key[0]]
    version = state.versions[key[0]][key[1]]
    return Assignment(
        model=key[0],
        version=key[1],
        backend=model.backend,
        artifact_uri=version.artifact_uri,
        sha256=version.sha256,
    )


def _up_to_date(state: ClusterState, old: Assignment) -> bool:
    """``old`` still names the model's backend and the version's artifact."""
    version = state.versions[old.model][old.version]
    return (old.artifact_uri, old.sha256, old.backend) == (
        version.artifact_uri,
        version.sha256,
        state.models[old.model].backend,
    )


def plan_pass(state: ClusterState, names: Iterable[str]) -> PassResult:
    """The assignment changes that place the models ``names`` (the others stay put)."""
    chosen = set(names)
    if not chosen:
        return PassResult()
    plan = state.placement(chosen)
    result = PassResult(shortfalls=plan.shortfalls)
    for worker_id, keys in sorted(plan.desired.items()):
        have = state.assignments.get(worker_id, {})
        for key in sorted(keys):
            old = have.get(key)
            if old is not None and _up_to_date(state, old):
                continue
            result.writes[layout.assignment(worker_id, *key)] = _assignment_for(state, key)
            result.created.append((worker_id, key))
    for worker_id, keys in sorted(state.assigned(chosen).items()):
        keep = plan.desired.get(worker_id, set())
        for key in sorted(keys - keep):
            result.writes[layout.assignment(worker_id, *key)] = None
            result.removed.append((worker_id, key))
    return result


def affected(state: ClusterState, changes: Changes, short: set[str]) -> set[str]:
    """The models whose placement ``changes`` may change: those changed, those assigned to a
    changed worker and, when a worker changed, the models ``short`` of replicas."""
    names = set(changes.models)
    for worker_id in changes.workers:
        names.update(m for m, _ in state.assignments.get(worker_id, {}))
    if changes.workers:
        names |= short
    return names


def write_pass(registry: Registry, result: PassResult, metrics: ManagerMetrics | None) -> None:
    """Write a planned pass in one batch (creates first), log and count it."""
    registry.write_many(
        {p: rec for p, rec in result.writes.items() if rec is not None},
        [p for p, rec in result.writes.items() if rec is None],
    )
    for worker_id, key in result.created:
        log.info("assigned %s@%d to %s", key[0], key[1], worker_id)
    for worker_id, key in result.removed:
        log.info("removed %s@%d from %s", key[0], key[1], worker_id)
    if metrics is not None:
        metrics.assignment_changes.labels("created").inc(len(result.created))
        metrics.assignment_changes.labels("removed").inc(len(result.removed))


def _unplaced(shortfalls: dict[Key, Shortfall]) -> int:
    return sum(s.wanted - s.placed for s in shortfalls.values())


def reconcile_once(registry: Registry, metrics: ManagerMetrics | None = None) -> PassResult:
    """One full pass from a fresh read of ZooKeeper. Safe to call without being leader
    only in tests."""
    state = read_state(registry)
    result = plan_pass(state, state.model_names())
    write_pass(registry, result, metrics)
    if metrics is not None:
        metrics.unplaced_replicas.set(_unplaced(result.shortfalls))
    return result


class Reconciler:
    """Contends for leadership; while leader, reconciles what changed in ``view``.

    ``view`` is the manager's :class:`ClusterView`; without one the reconciler starts (and
    closes) a view of its own. ``autoscaler`` (optional) runs on the leader before each pass.
    """

    def __init__(
        self,
        registry: Registry,
        metrics: ManagerMetrics,
        identifier: str,
        interval: float = 5.0,
        view: ClusterView | None = None,
        autoscaler: Autoscaler | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.identifier = identifier
        self.interval = interval
        self.passes = 0
        self.last_error: str | None = None
        self.autoscaler = autoscaler
        #: Models to place in the next pass whatever changed (room was made for them).
        self._replan: set[str] = set()
        self._own_view = view is None
        self.view = ClusterView(registry) if view is None else view
        #: Every model's shortfalls as of the last pass that placed it.
        self._shortfalls: dict[Key, Shortfall] = {}
        #: The shortfalls last logged: a shortfall is logged when it appears or changes,
        #: not on every pass it persists.
        self._reported: dict[Key, Shortfall] = {}
        #: When the next pass must be a full one (monotonic time; 0 = now).
        self._full_due = 0.0
        self._leader = threading.Event()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None
        self._election = None
        self._lock = threading.Lock()

    @property
    def is_leader(self) -> bool:
        return self._leader.is_set()

    def kick(self) -> None:
        """Ask for a pass soon (no-op unless this manager leads)."""
        self._kick.set()

    def start(self) -> None:
        self.registry.add_state_listener(self._on_state)
        if self._own_view:
            self.view.start()
        self.view.add_listener(self.kick)
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._kick.set()
        with self._lock:
            if self._election is not None:
                self._election.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._own_view and self.view.state == "started":
            self.view.close()

    def _on_state(self, state: str) -> None:
        if state == "lost":
            self._lost.set()
            self._kick.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._lost.clear()
            with self._lock:
                if self._stop.is_set():
                    return
                election = self.registry.election(self.identifier)
                self._election = election
            try:
                election.run(self._lead)
            except Exception as err:  # ZooKeeper trouble: contend again shortly
                log.warning("leader election interrupted: %s", err)
                self._stop.wait(1.0)

    def _lead(self) -> None:
        log.info("%s is the reconcile leader", self.identifier)
        self._leader.set()
        self.metrics.is_leader.set(1)
        self._full_due = 0.0
        wait = self.interval
        if self.autoscaler is not None:
            self.autoscaler.begin(self.view)
            wait = min(wait, self.autoscaler.interval_s)
        try:
            while not self._stop.is_set() and not self._lost.is_set():
                self._kick.clear()
                self._pass()
                self._kick.wait(wait)
        finally:
            self._leader.clear()
            self.metrics.is_leader.set(0)
            log.info("%s stops leading", self.identifier)

    def _report(self, shortfalls: dict[Key, Shortfall]) -> None:
        for key, short in sorted(shortfalls.items()):
            if self._reported.get(key) != short:
                log.warning("%s@%d: %s", key[0], key[1], short)
        for key in sorted(self._reported.keys() - shortfalls.keys()):
            log.info("%s@%d: every replica placed", key[0], key[1])
        self._reported = dict(shortfalls)

    def _plan(self) -> tuple[set[str], PassResult]:
        """The models to place in this pass, and their changes, from the view."""
        changes = self.view.take_changes()
        if changes.resynced or time.monotonic() >= self._full_due:
            self._full_due = time.monotonic() + FULL_PASS_EVERY_S
            state = self.view.copy()
            names = state.model_names()
            if self.autoscaler is not None:
                self.autoscaler.track(state, names, every=True)
            return names, plan_pass(state, names)
        with self.view.read() as state:
            if self.autoscaler is not None:
                self.autoscaler.track(state, changes.models)
            names = affected(state, changes, {m for m, _ in self._shortfalls}) | self._replan
            return names, plan_pass(state, names)

    def _pass(self) -> None:
        started = time.monotonic()
        try:
            if self.autoscaler is not None:
                self._replan |= self.autoscaler.tick_if_due(self.view, self._shortfalls)
            names, result = self._plan()
            self._replan -= names
            write_pass(self.registry, result, self.metrics)
            timeout = WRITES_VISIBLE_S + WRITES_VISIBLE_PER_NODE_S * len(result.writes)
            if not self.view.wait_written(result.writes, timeout):
                log.warning("the cluster view did not show this pass's writes in time")
            self._shortfalls = {
                k: s for k, s in self._shortfalls.items() if k[0] not in names
            } | result.shortfalls
            self.metrics.unplaced_replicas.set(_unplaced(self._shortfalls))
            self._report(self._shortfalls)
            self.last_error = None
            self.metrics.reconcile_runs.labels("ok").inc()
        except ModelgateError as err:
            self._full_due = 0.0
            self.last_error = str(err)
            self.metrics.reconcile_runs.labels("error").inc()
            log.warning("reconcile pass failed: %s", err)
            self._stop.wait(0.5)
        except Exception:
            self._full_due = 0.0
            self.last_error = "unexpected error; see the log"
            self.metrics.reconcile_runs.labels("error").inc()
            log.exception("reconcile pass failed")
            self._stop.wait(0.5)
        finally:
            self.passes += 1
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)
