"""The cluster's desired and observed state, as placement and status need it.

:class:`ClusterState` is built node by node with :meth:`ClusterState.apply` (one parsed
record per changed node) and indexed so that one model's status and one model's placement
cost O(that model + workers), not O(fleet). It is filled either by one fresh read
(:func:`read_state`) or, in a running manager, by :class:`ClusterView`, which keeps it up to
date from ZooKeeper tree watches (kazoo TreeCaches) so reads cost no ZooKeeper round trip.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from manager_api.placement import Demand, Key, Load, Placement, WorkerView, place
from registry import Registry, TreeEvent, layout
from registry.client import TreeWatch
from registry.errors import InvalidArgumentError, InvalidRecordError, ZooKeeperUnavailableError
from registry.records import (
    USAGE_STEP,
    Assignment,
    Model,
    ModelVersion,
    Record,
    Scale,
    Wake,
    Worker,
    WorkerSpec,
    steady,
)

log = logging.getLogger("manager_api.state")

R = TypeVar("R", bound=Record)


def start_replicas(model: Model) -> int:
    """Replicas wanted per active version before the leader chose any: ``replicas``, held
    within the bounds of an autoscaled model."""
    auto = model.autoscale
    if auto is None:
        return model.replicas
    return min(max(model.replicas, auto.min_replicas), auto.max_replicas)


#: The subtrees the state is built from.
WATCHED = (
    layout.MODELS,
    layout.ASSIGNMENTS,
    layout.ROUTES,
    layout.WORKERS,
    layout.SCALE,
    layout.WAKE,
)


def _measured(used: float | None, capacity: float | None) -> float | None:
    """A measurement placement can compare (None without a capacity to compare it with)."""
    return used if capacity else None


def _coarse(new: float | None, old: float | None, capacity: float | None) -> float | None:
    """``old`` while ``new`` stays within one step of it."""
    if new is None or old is None or capacity is None:
        return new
    return old if steady(new, old, capacity) else new


def worker_view(worker_id: str, worker: Worker, spec: WorkerSpec) -> WorkerView:
    """What placement sees of ``worker`` as measured now (the state keeps it coarser)."""
    return WorkerView(
        worker_id=worker_id,
        backend=worker.backend,
        labels=dict(worker.labels),
        capacity_memory_mb=worker.capacity_memory_mb,
        ready=worker.backend_live,
        cordoned=spec.cordoned or worker.state == "cordoned",
        draining=spec.draining or worker.state == "draining",
        capacity_cpu=worker.capacity_cpu,
        cpu_used=_measured(worker.usage.cpu if worker.usage else None, worker.capacity_cpu),
        memory_used_mb=_measured(
            worker.usage.memory_mb if worker.usage else None, worker.capacity_memory_mb
        ),
        avoid=frozenset(layout.parse_assignment_key(k) for k in worker.ooms),
    )


@dataclass
class ClusterState:
    """Everything placement and status need, with indexes kept by :meth:`apply`."""

    models: dict[str, Model] = field(default_factory=dict)
    versions: dict[str, dict[int, ModelVersion]] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)
    specs: dict[str, WorkerSpec] = field(default_factory=dict)
    #: worker id -> assigned keys (workers that are gone included).
    assignments: dict[str, dict[Key, Assignment]] = field(default_factory=dict)
    #: key -> workers with a route (READY).
    routes: dict[Key, set[str]] = field(default_factory=dict)
    #: Index: model -> version -> workers holding an assignment of it.
    holders: dict[str, dict[int, set[str]]] = field(default_factory=dict)
    #: Index: worker id -> memory (MiB) of the copies assigned to it (:meth:`memory_of`).
    memory_used: dict[str, int] = field(default_factory=dict)
    #: Per model: the largest memory (MiB) one copy was measured to use on any worker (kept
    #: while the model exists; taken in when it grows by more than :data:`USAGE_STEP`).
    model_sizes: dict[str, int] = field(default_factory=dict)
    #: Per model: the CPU cores one copy used at the last measurement (any worker).
    model_cpu: dict[str, float] = field(default_factory=dict)
    #: Index: worker id -> what placement sees of it (registered workers only).
    views: dict[str, WorkerView] = field(default_factory=dict)
    #: The replica count the leader chose per autoscaled model (``/scale``).
    scales: dict[str, Scale] = field(default_factory=dict)
    #: Models a gateway holds calls for, waiting for a first instance (``/wake``).
    wakes: dict[str, Wake] = field(default_factory=dict)
    #: Models and workers whose placement may have changed since :meth:`take_changed`.
    changed_models: set[str] = field(default_factory=set)
    changed_workers: set[str] = field(default_factory=set)
    #: Version records per model by node name (``versions`` is derived from it).
    _version_nodes: dict[str, dict[str, ModelVersion]] = field(default_factory=dict)

    # -- applying one node -----------------------------------------------------------------

    def apply(self, path: str, data: bytes | None) -> None:
        """Take in the node at ``path`` with ``data`` (``None``: the node is gone).

        Nodes that do not parse or have odd names are skipped with a warning, as if absent.
        """
        parts = path.strip("/").split("/")
        top, rest = "/" + parts[0], parts[1:]
        try:
            if top == layout.MODELS:
                self._apply_model(rest, data)
            elif top == layout.ASSIGNMENTS:
                self._apply_assignment(rest, data)
            elif top == layout.ROUTES:
                self._apply_route(rest, data)
            elif top == layout.WORKERS and len(rest) == 1:
                self._set_worker(rest[0], self._parse(path, data, Worker))
            elif top in (layout.SCALE, layout.WAKE) and len(rest) == 1:
                self._apply_scaling(top, layout.check_name("model", rest[0]), path, data)
        except InvalidArgumentError as err:
            log.warning("ignoring %s: %s", path, err)

    @staticmethod
    def _parse(path: str, data: bytes | None, record_type: type[R]) -> R | None:
        if data is None:
            return None
        try:
            return record_type.from_bytes(path, data)
        except InvalidRecordError as err:
            log.warning("skipping %s", err)
            return None

    def _apply_model(self, rest: list[str], data: bytes | None) -> None:
        if not rest:
            return
        name = layout.check_name("model", rest[0])
        if len(rest) == 1:
            self._set_model(name, self._parse(layout.model(name), data, Model))
        elif len(rest) == 3 and rest[1] == "versions":
            path = f"{layout.versions(name)}/{rest[2]}"
            nodes = self._version_nodes.setdefault(name, {})
            rec = self._parse(path, data, ModelVersion)
            if rec is None:
                nodes.pop(rest[2], None)
            else:
                nodes[rest[2]] = rec
            if not nodes:
                del self._version_nodes[name]
            derived = {r.version: r for _, r in sorted(nodes.items())}
            if derived:
                self.versions[name] = derived
            else:
                self.versions.pop(name, None)
            self.changed_models.add(name)

    def memory_of(self, model: str) -> int:
        """Memory (MiB) one copy of ``model`` takes: the larger of declared and measured."""
        rec = self.models.get(model)
        return max(rec.memory_mb if rec is not None else 0, self.model_sizes.get(model, 0))

    def _resize(self, model: str, change: Callable[[], None]) -> None:
        """Run ``change`` (of a model record or size) and keep ``memory_used`` in step."""
        old_memory = self.memory_of(model)
        change()
        delta = self.memory_of(model) - old_memory
        if delta:
            for workers in self.holders.get(model, {}).values():
                for wid in workers:
                    self.memory_used[wid] = self.memory_used.get(wid, 0) + delta
            self.changed_models.add(model)

    def _set_model(self, name: str, rec: Model | None) -> None:
        def change() -> None:
            if rec is None:
                self.models.pop(name, None)
                self.model_sizes.pop(name, None)
                self.model_cpu.pop(name, None)
            else:
                self.models[name] = rec

        self._resize(name, change)
        self.changed_models.add(name)

    def _measure_models(self, worker: Worker) -> None:
        """Take in the per-copy usage ``worker`` measured (of models that exist)."""
        for key, usage in worker.model_usage.items():
            try:
                name, _ = layout.parse_assignment_key(key)
            except InvalidArgumentError:
                continue
            if name not in self.models:
                continue
            self.model_cpu[name] = usage.cpu
            size = math.ceil(usage.memory_mb)
            known = self.model_sizes.get(name)
            if known is None or size > known * (1 + USAGE_STEP):
                self._resize(name, functools.partial(self.model_sizes.__setitem__, name, size))

    def _apply_assignment(self, rest: list[str], data: bytes | None) -> None:
        if not rest:
            return
        wid = layout.check_node_id("worker", rest[0])
        if len(rest) == 1:
            if data is None:
                for key in list(self.assignments.get(wid, {})):
                    self._set_assignment(wid, key, None)
                self.assignments.pop(wid, None)
                self.specs.pop(wid, None)
                self.memory_used.pop(wid, None)
            else:
                spec = self._parse(layout.assignments(wid), data, WorkerSpec)
                self.specs[wid] = spec or WorkerSpec()
                self.assignments.setdefault(wid, {})
            self._refresh_view(wid)
        elif len(rest) == 2:
            key = layout.parse_assignment_key(rest[1])
            self._set_assignment(
                wid, key, self._parse(layout.assignment(wid, *key), data, Assignment)
            )

    def _set_assignment(self, wid: str, key: Key, rec: Assignment | None) -> None:
        keys = self.assignments.setdefault(wid, {})
        self.specs.setdefault(wid, WorkerSpec())
        had = key in keys
        by_version = self.holders.setdefault(key[0], {})
        if rec is None:
            keys.pop(key, None)
            if had:
                by_version[key[1]].discard(wid)
                if not by_version[key[1]]:
                    del by_version[key[1]]
                self.memory_used[wid] -= self.memory_of(key[0])
        else:
            keys[key] = rec
            if not had:
                by_version.setdefault(key[1], set()).add(wid)
                self.memory_used[wid] = self.memory_used.get(wid, 0) + self.memory_of(key[0])
        if not by_version:
            del self.holders[key[0]]
        self.changed_models.add(key[0])

    def _apply_route(self, rest: list[str], data: bytes | None) -> None:
        if len(rest) != 3 or not rest[1].isdigit() or int(rest[1]) < 1:
            return
        key = (layout.check_name("model", rest[0]), int(rest[1]))
        if data is None:
            workers = self.routes.get(key, set())
            workers.discard(rest[2])
            if not workers:
                self.routes.pop(key, None)
        else:
            self.routes.setdefault(key, set()).add(rest[2])
        self.changed_models.add(key[0])

    def _apply_scaling(self, top: str, name: str, path: str, data: bytes | None) -> None:
        into: dict[str, Scale] | dict[str, Wake] = (
            self.scales if top == layout.SCALE else self.wakes
        )
        rec = self._parse(path, data, Scale if top == layout.SCALE else Wake)
        if rec is None:
            into.pop(name, None)
        else:
            into[name] = rec  # type: ignore[assignment]
        self.changed_models.add(name)

    def _set_worker(self, wid: str, rec: Worker | None) -> None:
        if rec is None:
            self.workers.pop(wid, None)
        else:
            self.workers[wid] = rec
            self._measure_models(rec)
        self._refresh_view(wid)

    def _refresh_view(self, wid: str) -> None:
        """Recompute what placement sees of ``wid``; mark it changed if that differs. Measured
        usage within :data:`USAGE_STEP` of the capacity of what placement saw stays as it was."""
        worker = self.workers.get(wid)
        view = (
            None
            if worker is None
            else worker_view(wid, worker, self.specs.get(wid) or WorkerSpec())
        )
        old = self.views.get(wid)
        if view is not None and old is not None:
            view = dataclasses.replace(
                view,
                cpu_used=_coarse(view.cpu_used, old.cpu_used, view.capacity_cpu),
                memory_used_mb=_coarse(
                    view.memory_used_mb, old.memory_used_mb, view.capacity_memory_mb
                ),
            )
        if old == view:
            return
        if view is None:
            del self.views[wid]
        else:
            self.views[wid] = view
        self.changed_workers.add(wid)

    def take_changed(self) -> tuple[set[str], set[str]]:
        """The models and workers changed since the last call, and forget them."""
        models, workers = self.changed_models, self.changed_workers
        self.changed_models, self.changed_workers = set(), set()
        return models, workers

    def copy(self) -> ClusterState:
        """An independent copy (without change marks) for work too long to hold a lock for.

        Records are immutable once applied (a change replaces them), so the copy shares
        them and copies only the containers: O(nodes), ~0.1 s at 10,000 models x 3 replicas.
        """
        return ClusterState(
            models=dict(self.models),
            versions=dict(self.versions),
            workers=dict(self.workers),
            specs=dict(self.specs),
            assignments={w: dict(keys) for w, keys in self.assignments.items()},
            routes={k: set(ws) for k, ws in self.routes.items()},
            holders={m: {v: set(ws) for v, ws in by.items()} for m, by in self.holders.items()},
            memory_used=dict(self.memory_used),
            model_sizes=dict(self.model_sizes),
            model_cpu=dict(self.model_cpu),
            views=dict(self.views),
            scales=dict(self.scales),
            wakes=dict(self.wakes),
            _version_nodes={m: dict(n) for m, n in self._version_nodes.items()},
        )

    # -- queries ---------------------------------------------------------------------------

    def worker_views(self) -> list[WorkerView]:
        return list(self.views.values())

    def active_versions(self, model: Model) -> list[int]:
        """Versions that get replicas: weighted or labelled ones, else the newest."""
        known = self.versions.get(model.name, {})
        if model.state != "online" or not known:
            return []
        active = {int(v) for v, w in model.traffic.items() if w > 0 and int(v) in known}
        active |= {v for v, rec in known.items() if rec.labels}
        return sorted(active) if active else [max(known)]

    def replicas_of(self, model: Model) -> int:
        """Replicas wanted per active version: the leader's choice for an autoscaled model
        (``replicas`` within the bounds until it chose), else ``replicas``."""
        scale = self.scales.get(model.name) if model.autoscale is not None else None
        return scale.replicas if scale is not None else start_replicas(model)

    def demands_of(self, model: Model) -> list[Demand]:
        return [
            Demand(
                model=model.name,
                version=v,
                backend=model.backend,
                replicas=self.replicas_of(model),
                constraints=dict(model.constraints),
                memory_mb=self.memory_of(model.name),
                cpu=self.model_cpu.get(model.name, 0.0),
            )
            for v in self.active_versions(model)
        ]

    def model_names(self) -> set[str]:
        """Every model wanted or still assigned somewhere."""
        return set(self.models) | set(self.holders)

    def assigned(self, names: Iterable[str]) -> dict[str, set[Key]]:
        """Worker id -> the assigned keys of the models ``names``."""
        out: dict[str, set[Key]] = {}
        for name in names:
            for v, workers in self.holders.get(name, {}).items():
                for wid in workers:
                    out.setdefault(wid, set()).add((name, v))
        return out

    def placement(self, names: Iterable[str] | None = None) -> Placement:
        """Placement of the models ``names`` (every model if None), every other model staying
        where it is assigned: O(those models' replicas x log(workers) + workers)."""
        chosen = self.model_names() if names is None else set(names)
        demands = [
            d for n in sorted(chosen) if n in self.models for d in self.demands_of(self.models[n])
        ]
        current = self.assigned(chosen)
        ready = {d.key: self.routes.get(d.key, set()) for d in demands}
        baseline: dict[str, Load] = {}
        for wid in self.views:
            keys = current.get(wid, set())
            memory = self.memory_used.get(wid, 0) - sum(self.memory_of(m) for m, _ in keys)
            baseline[wid] = (memory, len(self.assignments.get(wid, {})) - len(keys))
        return place(demands, self.worker_views(), current, ready=ready, baseline=baseline)


def read_state(reg: Registry) -> ClusterState:
    """One fresh (non-atomic) read of every watched subtree, one level per round trip."""
    state = ClusterState()
    for top in WATCHED:
        nodes = reg.snapshot(top)
        for path in sorted(nodes, key=lambda p: (p.count("/"), p)):
            state.apply(path, nodes[path])
    state.take_changed()
    return state


@dataclass(frozen=True)
class Changes:
    """What changed in a :class:`ClusterView` since the last :meth:`ClusterView.take_changes`."""

    models: set[str]
    workers: set[str]
    #: The watches resynced after a connection loss: only a full pass is sure to be right.
    resynced: bool


ViewState = Literal["latent", "started"]


class ClusterView:
    """A :class:`ClusterState` kept up to date from TreeCaches of :data:`WATCHED`.

    Every change is parsed once, under a lock; readers hold the same lock while they read
    (:meth:`read`). Lifecycle: ``latent`` → :meth:`start` (returns once every cache is
    loaded) → ``started`` → :meth:`close` (watches closed, state forgotten) → ``latent``.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.state: ViewState = "latent"
        self._cluster = ClusterState()
        self._data: dict[str, bytes] = {}
        self._cond = threading.Condition(threading.RLock())
        self._initialized: set[str] = set()
        self._resynced = False
        self._trees: list[TreeWatch] = []
        self._listeners: list[Callable[[], None]] = []
        #: Bumped by :meth:`close`: events still queued in a closed cache are dropped.
        self._generation = 0

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (on a kazoo thread: keep it short) after every change."""
        self._listeners.append(callback)

    def start(self, stalled_s: float = 120.0, progress_s: float = 10.0) -> ClusterView:
        """Start the watches and wait until each has loaded its subtree; return self.

        A large fleet takes minutes to read (kazoo reads node by node), so there is no
        deadline: a line every ``progress_s`` says how far it is, and only ``stalled_s``
        without a single node read raises ZooKeeperUnavailableError."""
        if self.state != "latent":
            raise RuntimeError(f"cluster view is {self.state}; start it once")
        self.state = "started"
        for top in WATCHED:
            self._trees.append(self.registry.watch_tree(top, self._handler(top)))
        started = last_progress = time.monotonic()
        read = 0
        with self._cond:
            while not self._cond.wait_for(
                lambda: len(self._initialized) == len(WATCHED), progress_s
            ):
                now = time.monotonic()
                if len(self._data) > read:
                    read, last_progress = len(self._data), now
                elif now - last_progress >= stalled_s:
                    missing = ", ".join(sorted(set(WATCHED) - self._initialized))
                    raise ZooKeeperUnavailableError(
                        f"the cluster view did not load {missing} from ZooKeeper at "
                        f"{self.registry.hosts}: no node read for {stalled_s:g}s"
                    )
                log.info(
                    "reading the cluster from ZooKeeper: %d nodes after %.0f s, %d of %d "
                    "trees complete", read, now - started, len(self._initialized), len(WATCHED),
                )  # fmt: skip
        return self

    def close(self) -> None:
        if self.state != "started":
            raise RuntimeError("cluster view is not started")
        for tree in self._trees:
            tree.close()
        with self._cond:
            self.state = "latent"
            self._generation += 1
            self._trees, self._initialized, self._resynced = [], set(), False
            self._cluster, self._data = ClusterState(), {}

    def _handler(self, top: str) -> Callable[[TreeEvent], None]:
        generation = self._generation

        def on_event(event: TreeEvent) -> None:
            with self._cond:
                if self.state != "started" or self._generation != generation:
                    return
                if event.kind == "initialized":
                    self._initialized.add(top)
                elif event.kind in ("reconnected", "lost"):
                    self._resynced = True
                elif event.path is not None and event.kind in ("added", "updated", "removed"):
                    self._apply(event.path, None if event.kind == "removed" else event.data or b"")
                self._cond.notify_all()
            for listener in self._listeners:
                listener()

        return on_event

    def _apply(self, path: str, data: bytes | None) -> None:
        if data is None:
            self._data.pop(path, None)
        else:
            self._data[path] = data
        self._cluster.apply(path, data)

    @contextmanager
    def read(self) -> Iterator[ClusterState]:
        """The current state, unchanged while the ``with`` block runs: keep it short (one
        model, one worker); work on the whole fleet takes a :meth:`copy`."""
        with self._cond:
            yield self._cluster

    def copy(self) -> ClusterState:
        """A copy of the current state, for reads of the whole fleet (see :meth:`read`)."""
        with self._cond:
            return self._cluster.copy()

    def take_changes(self) -> Changes:
        with self._cond:
            models, workers = self._cluster.take_changed()
            resynced, self._resynced = self._resynced, False
        return Changes(models, workers, resynced)

    def wait_written(self, writes: Mapping[str, Record | None], timeout: float = 5.0) -> bool:
        """Wait until the view shows each of ``writes`` (a record written, None: deleted).

        A writer calls this after its own writes so that its next read sees them. Returns
        False if the view had not caught up within ``timeout`` (someone else wrote later).
        """
        # NOTE: events arrive about in the order of the writes: checking the oldest pending
        # write first and dropping each one seen keeps a wait for N writes O(N), not O(N²).
        pending = {p: None if r is None else r.to_bytes(p) for p, r in writes.items()}
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while pending:
                    path, data = next(iter(pending.items()))
                    if self._data.get(path) != data:
                        break
                    del pending[path]
                if not pending:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
