"""The reconcile loop: make ``/assignments`` match the placement of what ``/models`` wants.

Only the elected leader (kazoo Election at ``/manager/leader``) writes. A pass is
idempotent: it reads the state, computes the placement, creates missing assignments
first, then removes stale ones (so moves are make-before-break). Passes run on every
watched change (workers joining or leaving, models, routes), when the API asks for one,
and at least every ``interval`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from manager_api.metrics import ManagerMetrics
from manager_api.placement import Key, Placement, Shortfall, place
from manager_api.state import ClusterState, read_state
from registry import Registry, layout
from registry.client import TreeWatch, Watch
from registry.errors import ModelgateError
from registry.records import Assignment

log = logging.getLogger("manager_api.reconcile")


@dataclass
class PassResult:
    """What one reconcile pass changed."""

    created: list[tuple[str, Key]] = field(default_factory=list)
    removed: list[tuple[str, Key]] = field(default_factory=list)
    shortfalls: dict[Key, Shortfall] = field(default_factory=dict)


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


def reconcile_once(registry: Registry, metrics: ManagerMetrics | None = None) -> PassResult:
    """One idempotent pass. Safe to call without being leader only in tests."""
    state = read_state(registry)
    plan: Placement = place(
        state.demands(), state.worker_views(), state.current(), ready=state.routes
    )
    result = PassResult(shortfalls=plan.shortfalls)
    for worker_id, keys in sorted(plan.desired.items()):
        have = state.assignments.get(worker_id, {})
        for key in sorted(keys):
            want = _assignment_for(state, key)
            old = have.get(key)
            if old is not None and (old.artifact_uri, old.sha256, old.backend) == (
                want.artifact_uri,
                want.sha256,
                want.backend,
            ):
                continue
            registry.put(layout.assignment(worker_id, *key), want)
            result.created.append((worker_id, key))
    for worker_id, have in sorted(state.assignments.items()):
        keep = plan.desired.get(worker_id, set())
        for key in sorted(set(have) - keep):
            registry.delete(layout.assignment(worker_id, *key))
            result.removed.append((worker_id, key))
    for worker_id, key in result.created:
        log.info("assigned %s@%d to %s", key[0], key[1], worker_id)
    for worker_id, key in result.removed:
        log.info("removed %s@%d from %s", key[0], key[1], worker_id)
    if metrics is not None:
        metrics.assignment_changes.labels("created").inc(len(result.created))
        metrics.assignment_changes.labels("removed").inc(len(result.removed))
        metrics.unplaced_replicas.set(sum(s.wanted - s.placed for s in plan.shortfalls.values()))
    return result


class Reconciler:
    """Contends for leadership; while leader, runs :func:`reconcile_once` on changes."""

    def __init__(
        self,
        registry: Registry,
        metrics: ManagerMetrics,
        identifier: str,
        interval: float = 5.0,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.identifier = identifier
        self.interval = interval
        self.passes = 0
        self.last_error: str | None = None
        #: The shortfalls last logged: a shortfall is logged when it appears or changes,
        #: not on every pass it persists.
        self._reported: dict[Key, Shortfall] = {}
        self._leader = threading.Event()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None
        self._election = None
        self._watches: list[Watch] = []
        self._trees: list[TreeWatch] = []
        self._lock = threading.Lock()

    @property
    def is_leader(self) -> bool:
        return self._leader.is_set()

    def kick(self) -> None:
        """Ask for a pass soon (no-op unless this manager leads)."""
        self._kick.set()

    def start(self) -> None:
        self.registry.add_state_listener(self._on_state)
        self._watches.append(
            self.registry.watch_children(layout.WORKERS, lambda _children: self.kick())
        )
        for path in (layout.MODELS, layout.ROUTES):
            self._trees.append(self.registry.watch_tree(path, self._on_tree))
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._kick.set()
        with self._lock:
            if self._election is not None:
                self._election.cancel()
        for w in self._watches:
            w.cancel()
        for t in self._trees:
            t.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def _on_tree(self, event: object) -> None:
        self.kick()

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
        try:
            while not self._stop.is_set() and not self._lost.is_set():
                self._kick.clear()
                self._pass()
                self._kick.wait(self.interval)
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
        self._reported = shortfalls

    def _pass(self) -> None:
        started = time.monotonic()
        try:
            self._report(reconcile_once(self.registry, self.metrics).shortfalls)
            self.last_error = None
            self.metrics.reconcile_runs.labels("ok").inc()
        except ModelgateError as err:
            self.last_error = str(err)
            self.metrics.reconcile_runs.labels("error").inc()
            log.warning("reconcile pass failed: %s", err)
            self._stop.wait(0.5)
        except Exception:
            self.last_error = "unexpected error; see the log"
            self.metrics.reconcile_runs.labels("error").inc()
            log.exception("reconcile pass failed")
            self._stop.wait(0.5)
        finally:
            self.passes += 1
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)
