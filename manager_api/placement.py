"""Placement of model-version replicas onto workers: a pure function, no ZooKeeper.

Rules:

- a replica goes to a worker that is registered, ready (agent state ``ready``), not
  cordoned and not draining, of the model's backend kind, whose labels include every
  constraint of the model, and with enough free declared memory;
- never two replicas of one model version on one worker;
- least loaded first: the share of declared memory already assigned, then the number of
  assignments, then the number of replicas of the same model (spread), then the id;
- existing assignments stay where they are (cordoned workers keep theirs) unless their
  worker is gone, draining or no longer fits; surplus replicas are removed;
- make-before-break: a draining worker keeps a replica until every replacement is READY;
- when not enough workers fit, the shortfall is reported with the reason.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Key = tuple[str, int]
"""``(model, version)``."""
Load = tuple[int, int]
"""``(declared memory in MiB, number of assignments)`` a worker carries."""
_Entry = tuple[float, int, str]


@dataclass(frozen=True)
class WorkerView:
    """What placement needs to know about one registered worker."""

    worker_id: str
    backend: str
    labels: Mapping[str, str] = field(default_factory=dict)
    capacity_memory_mb: int | None = None
    #: The model server beside the agent is live (new replicas only go to live workers).
    ready: bool = True
    cordoned: bool = False
    draining: bool = False
    #: CPU cores offered, and the cores the model server was measured to use (None: unknown).
    capacity_cpu: float | None = None
    cpu_used: float | None = None
    #: Memory the model server was measured to use, in MiB (None: unknown).
    memory_used_mb: float | None = None
    #: Keys not to place here: the server ran out of memory with them loaded.
    avoid: frozenset[Key] = frozenset()

    @property
    def usable(self) -> bool:
        """May receive new replicas."""
        return self.ready and not self.cordoned and not self.draining


@dataclass(frozen=True)
class Demand:
    """``replicas`` replicas of one model version are wanted."""

    model: str
    version: int
    backend: str
    replicas: int
    constraints: Mapping[str, str] = field(default_factory=dict)
    memory_mb: int = 0

    @property
    def key(self) -> Key:
        return (self.model, self.version)


@dataclass(frozen=True)
class Shortfall:
    """Fewer replicas could be placed than wanted, and why."""

    placed: int
    wanted: int
    reason: str
    #: Only memory stopped it: workers that match and are usable exist, all too full (room
    #: could be made by evicting idle copies).
    memory_bound: bool = False

    def __str__(self) -> str:
        return f"{self.placed}/{self.wanted} placed: {self.reason}"


@dataclass
class Placement:
    """The result: which keys each worker should hold, and what could not be placed."""

    desired: dict[str, set[Key]]
    shortfalls: dict[Key, Shortfall]

    def holders(self, key: Key) -> set[str]:
        return {w for w, keys in self.desired.items() if key in keys}


def _matches(worker: WorkerView, demand: Demand) -> bool:
    return worker.backend == demand.backend and all(
        worker.labels.get(k) == v for k, v in demand.constraints.items()
    )


def _constraints_text(constraints: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(constraints.items()))


def explain(
    demand: Demand,
    workers: Iterable[WorkerView],
    holders: set[str],
    used_memory: Mapping[str, int] | None = None,
) -> str:
    """Why no further replica of ``demand`` fits (``holders`` already have one)."""
    used_memory = used_memory or {}
    of_kind = [w for w in workers if w.backend == demand.backend]
    if not of_kind:
        return f"no {demand.backend} worker registered"
    matching = [w for w in of_kind if _matches(w, demand)]
    if not matching:
        label = "labels" if len(demand.constraints) > 1 else "label"
        return f"no {demand.backend} worker with {label} {_constraints_text(demand.constraints)}"
    usable = [w for w in matching if w.usable]
    if not usable:
        return (
            f"{len(matching)} matching {demand.backend} worker(s), none ready and uncordoned "
            "(cordoned, draining or not ready)"
        )
    free = [w for w in usable if w.worker_id not in holders]
    if not free:
        return (
            f"only {len(usable)} usable {demand.backend} worker(s) and at most one replica "
            "per worker"
        )
    return (
        f"not enough free memory for {demand.memory_mb} MiB per replica on the "
        f"{len(free)} remaining {demand.backend} worker(s)"
    )


class _Loads:
    """Per-worker load while placing, and the least loaded usable worker per worker kind.

    Workers are grouped by kind (backend and labels, so a demand's constraints select whole
    groups); each group keeps a heap of ``(memory share, assignments, worker id)``. A load
    only grows while placing, so an entry whose load is no longer the worker's is stale and
    dropped when it comes up.
    """

    def __init__(self, workers: Mapping[str, WorkerView], baseline: Mapping[str, Load]) -> None:
        self.workers = workers
        self.used = {w: baseline.get(w, (0, 0))[0] for w in workers}
        self.count = {w: baseline.get(w, (0, 0))[1] for w in workers}
        self._kinds: dict[tuple[str, tuple[tuple[str, str], ...]], list[_Entry]] = {}
        self._kind_of: dict[str, list[_Entry]] = {}
        self._selected: dict[tuple[str, tuple[tuple[str, str], ...]], list[list[_Entry]]] = {}

    def share(self, worker_id: str) -> float:
        cap = self.workers[worker_id].capacity_memory_mb
        return self.used[worker_id] / cap if cap else 0.0

    def fits(self, worker: WorkerView, demand: Demand) -> bool:
        cap = worker.capacity_memory_mb
        return cap is None or self.used[worker.worker_id] + demand.memory_mb <= cap

    def add(self, worker_id: str, memory_mb: int) -> None:
        self.used[worker_id] += memory_mb
        self.count[worker_id] += 1
        heap = self._kind_of.get(worker_id)
        if heap is not None:
            heapq.heappush(heap, self._entry(worker_id))

    def _entry(self, worker_id: str) -> _Entry:
        return (self.share(worker_id), self.count[worker_id], worker_id)

    def index_usable(self) -> None:
        """Build the heaps of usable workers (after the kept replicas are counted)."""
        for wid, w in sorted(self.workers.items()):
            if not w.usable:
                continue
            heap = self._kinds.setdefault((w.backend, tuple(sorted(w.labels.items()))), [])
            heap.append(self._entry(wid))
            self._kind_of[wid] = heap
        for heap in self._kinds.values():
            heapq.heapify(heap)

    def _heaps_for(self, demand: Demand) -> list[list[_Entry]]:
        wanted = (demand.backend, tuple(sorted(demand.constraints.items())))
        if wanted not in self._selected:
            self._selected[wanted] = [
                heap
                for (backend, labels), heap in self._kinds.items()
                if backend == demand.backend
                and all(dict(labels).get(k) == v for k, v in demand.constraints.items())
            ]
        return self._selected[wanted]

    def least_loaded(self, demand: Demand, exclude: set[str]) -> _Entry | None:
        """The least loaded usable worker matching ``demand`` where it fits, not in ``exclude``."""
        best: _Entry | None = None
        for heap in self._heaps_for(demand):
            skipped = []
            while heap:
                entry = heap[0]
                wid = entry[2]
                if entry != self._entry(wid):
                    heapq.heappop(heap)
                elif wid in exclude or not self.fits(self.workers[wid], demand):
                    skipped.append(heapq.heappop(heap))
                else:
                    if best is None or entry < best:
                        best = entry
                    break
            for entry in skipped:
                heapq.heappush(heap, entry)
        return best


def place(
    demands: Iterable[Demand],
    workers: Iterable[WorkerView],
    current: Mapping[str, Iterable[Key]],
    ready: Mapping[Key, Iterable[str]] | None = None,
    baseline: Mapping[str, Load] | None = None,
) -> Placement:
    """Compute the desired assignments of the keys of ``demands``.

    ``current`` maps worker id to the keys assigned now (workers that are gone may appear);
    ``ready`` maps a key to the workers where it is READY (has a route). ``baseline`` is the
    load each worker carries from keys placed elsewhere (not in ``demands`` or ``current``):
    placing only the models that changed counts what every worker already holds.
    Cost: O(replicas x log(workers)) plus the replicas that do not fit, not O(replicas x workers).
    """
    live = {w.worker_id: w for w in workers}
    ready_on = ready or {}
    demand_list = sorted(demands, key=lambda d: d.key)
    desired: dict[str, set[Key]] = {w: set() for w in live}
    loads = _Loads(live, baseline or {})
    holders: dict[Key, set[str]] = {d.key: set() for d in demand_list}
    #: model -> worker -> replicas of that model (any version) placed there in this call.
    on_worker: dict[str, dict[str, int]] = {}
    holders_now: dict[Key, list[str]] = {}
    for worker_id, keys in current.items():
        for key in keys:
            holders_now.setdefault(key, []).append(worker_id)

    def assign(worker_id: str, d: Demand) -> None:
        desired[worker_id].add(d.key)
        holders[d.key].add(worker_id)
        per_model = on_worker.setdefault(d.model, {})
        per_model[worker_id] = per_model.get(worker_id, 0) + 1
        loads.add(worker_id, d.memory_mb)

    # 1. keep what still fits (cordoned workers keep theirs; draining/gone lose theirs).
    for d in demand_list:
        keep = [
            live[w]
            for w in holders_now.get(d.key, [])
            if w in live and not live[w].draining and _matches(live[w], d)
        ]
        keep.sort(key=lambda w: (w.cordoned, w.worker_id))
        for w in keep[: d.replicas]:
            assign(w.worker_id, d)

    # 2. place the missing replicas, least loaded first. Workers holding another version of
    # the model rank after equally loaded ones without (spread); they are few, so they are
    # compared one by one and the heaps answer for every other worker.
    loads.index_usable()
    shortfalls: dict[Key, Shortfall] = {}
    for d in demand_list:
        while len(holders[d.key]) < d.replicas:
            same = on_worker.get(d.model, {})
            choices: list[tuple[float, int, int, str]] = []
            entry = loads.least_loaded(d, holders[d.key] | same.keys())
            if entry is not None:
                choices.append((entry[0], entry[1], 0, entry[2]))
            for wid, n in same.items():
                w = live[wid]
                if w.usable and _matches(w, d) and wid not in holders[d.key] and loads.fits(w, d):
                    choices.append((loads.share(wid), loads.count[wid], n, wid))
            if not choices:
                shortfalls[d.key] = Shortfall(
                    len(holders[d.key]),
                    d.replicas,
                    explain(d, live.values(), holders[d.key], loads.used),
                )
                break
            assign(min(choices)[3], d)

    # 3. make-before-break: a draining worker keeps a replica until replacements are READY.
    for d in demand_list:
        ready_elsewhere = len(holders[d.key] & set(ready_on.get(d.key, ())))
        if ready_elsewhere >= d.replicas:
            continue
        for wid in holders_now.get(d.key, []):
            if wid in live and live[wid].draining and _matches(live[wid], d):
                desired[wid].add(d.key)

    return Placement({w: keys for w, keys in desired.items() if keys}, shortfalls)
