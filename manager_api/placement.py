"""Placement of model-version replicas onto workers: a pure function, no ZooKeeper.

Rules:

- a replica goes to a worker that is registered, ready (agent state ``ready``), not
  cordoned and not draining, of the model's backend kind, whose labels include every
  constraint of the model, with enough free memory, and whose model server did not run out
  of memory with that copy loaded (``WorkerView.avoid``);
- never two replicas of one model version on one worker;
- most headroom first: the larger of the worker's CPU share (measured) and memory share
  (measured, or declared where that is more or nothing is measured), then the number of
  assignments, then the number of replicas of the same model (spread), then the id;
- a copy's memory is the larger of its declared and its measured size (``Demand.memory_mb``);
- existing assignments stay where they are (cordoned workers keep theirs) unless their
  worker is gone, draining, no longer matches or ran out of memory with it; surplus
  replicas are removed from the most loaded holders first, but a READY surplus copy stays
  while the holders kept are not READY yet (make-before-break);
- make-before-break: a draining worker keeps a replica until every replacement is READY;
- rebalance: when the loads of usable workers of one kind differ by more than
  ``rebalance_drift``, one replica moves per call from the most to the least loaded: it is
  added there, and the rule on surplus removes the old copy once the new one is READY;
- when not enough workers fit, the shortfall is reported with the reason.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

Key = tuple[str, int]
"""``(model, version)``."""
Load = tuple[int, int]
"""``(memory in MiB of the copies assigned, number of assignments)`` a worker carries."""
_Entry = tuple[float, int, str]
_Kind = tuple[str, tuple[tuple[str, str], ...]]

#: Usable workers of one kind whose loads (the larger of CPU and memory share) differ by more
#: than this get one replica moved per placement, from the most to the least loaded.
REBALANCE_DRIFT = 0.3


def _share(used: float | None, capacity: float | None) -> float:
    return used / capacity if used is not None and capacity else 0.0


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

    @property
    def measured_load(self) -> float:
        """The larger of the measured CPU and memory shares (0 where unmeasured)."""
        return max(
            _share(self.cpu_used, self.capacity_cpu),
            _share(self.memory_used_mb, self.capacity_memory_mb),
        )

    @property
    def headroom(self) -> float | None:
        """1 minus :attr:`measured_load`; None when nothing was measured against a capacity."""
        measured = (self.cpu_used is not None and self.capacity_cpu) or (
            self.memory_used_mb is not None and self.capacity_memory_mb
        )
        return 1.0 - self.measured_load if measured else None


@dataclass(frozen=True)
class Demand:
    """``replicas`` replicas of one model version are wanted."""

    model: str
    version: int
    backend: str
    replicas: int
    constraints: Mapping[str, str] = field(default_factory=dict)
    #: Memory one copy needs, in MiB: the larger of the declared and the measured size.
    memory_mb: int = 0
    #: CPU cores one copy was measured to use (0: unknown).
    cpu: float = 0.0

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
    fits: Callable[[WorkerView, Demand], bool],
) -> tuple[str, bool]:
    """Why no further replica of ``demand`` fits (``holders`` already have one; ``fits``:
    a worker has the memory for one more copy), and whether only memory stopped it."""
    of_kind = [w for w in workers if w.backend == demand.backend]
    if not of_kind:
        return f"no {demand.backend} worker registered", False
    matching = [w for w in of_kind if _matches(w, demand)]
    if not matching:
        label = "labels" if len(demand.constraints) > 1 else "label"
        return (
            f"no {demand.backend} worker with {label} {_constraints_text(demand.constraints)}",
            False,
        )
    usable = [w for w in matching if w.usable]
    if not usable:
        return (
            f"{len(matching)} matching {demand.backend} worker(s), none ready and uncordoned "
            "(cordoned, draining or not ready)"
        ), False
    free = [w for w in usable if w.worker_id not in holders]
    if not free:
        return (
            f"only {len(usable)} usable {demand.backend} worker(s) and at most one replica "
            "per worker"
        ), False
    avoided = sorted(w.worker_id for w in free if demand.key in w.avoid)
    ran_out = (
        f"the model server on {', '.join(avoided)} ran out of memory with "
        f"{demand.model}@{demand.version} loaded (not placed there again)"
    )
    room = [w for w in free if demand.key not in w.avoid and not fits(w, demand)]
    if not room:
        return ran_out, False
    full = (
        f"not enough free memory for {demand.memory_mb} MiB per replica on the "
        f"{len(room)} remaining {demand.backend} worker(s)"
    )
    return (f"{full}; {ran_out}" if avoided else full), True


class _Loads:
    """Per-worker load while placing, and the least loaded usable worker per worker kind.

    A worker's load is the larger of its CPU share and its memory share: what its copies
    take (memory: the larger of declared and measured; CPU: measured per copy) plus what was
    measured beyond the copies it holds now (the server itself, copies not yet sized).
    Workers are grouped by kind (backend and labels, so a demand's constraints select whole
    groups); each group keeps a heap of ``(load, assignments, worker id)``. A load only grows
    while placing, so an entry whose load is no longer the worker's is stale and dropped
    when it comes up.
    """

    def __init__(self, workers: Mapping[str, WorkerView], baseline: Mapping[str, Load]) -> None:
        self.workers = workers
        self.memory = {w: baseline.get(w, (0, 0))[0] for w in workers}
        self.count = {w: baseline.get(w, (0, 0))[1] for w in workers}
        self.cpu = {wid: w.cpu_used or 0.0 for wid, w in workers.items()}
        #: Memory measured beyond the sizes of the copies assigned now (see :meth:`measured`).
        self.extra = dict.fromkeys(workers, 0.0)
        self._kinds: dict[_Kind, list[_Entry]] = {}
        self._members: dict[_Kind, list[str]] = {}
        self._kind_of: dict[str, list[_Entry]] = {}
        self._selected: dict[_Kind, list[list[_Entry]]] = {}

    def load(self, worker_id: str, memory_mb: float = 0, cpu: float = 0.0) -> float:
        """The worker's load with ``memory_mb`` and ``cpu`` more (negative: less)."""
        w = self.workers[worker_id]
        memory = self.memory[worker_id] + self.extra[worker_id] + memory_mb
        return max(
            _share(memory, w.capacity_memory_mb), _share(self.cpu[worker_id] + cpu, w.capacity_cpu)
        )

    def fits(self, worker: WorkerView, demand: Demand) -> bool:
        cap = worker.capacity_memory_mb
        used = self.memory[worker.worker_id] + self.extra[worker.worker_id]
        return cap is None or used + demand.memory_mb <= cap

    def allowed(self, worker: WorkerView, demand: Demand) -> bool:
        """A further copy of ``demand`` may go to ``worker`` (memory and out-of-memory)."""
        return demand.key not in worker.avoid and self.fits(worker, demand)

    def add(self, worker_id: str, demand: Demand) -> None:
        self.memory[worker_id] += demand.memory_mb
        self.count[worker_id] += 1
        self.cpu[worker_id] += demand.cpu
        heap = self._kind_of.get(worker_id)
        if heap is not None:
            heapq.heappush(heap, self._entry(worker_id))

    def _entry(self, worker_id: str) -> _Entry:
        return (self.load(worker_id), self.count[worker_id], worker_id)

    def measured(self, assigned_now: Mapping[str, tuple[float, float]]) -> None:
        """Take in the measured usage, before any copy of the keys being placed is counted:
        ``assigned_now`` is the memory and CPU of the copies of those keys that each worker
        holds now (measured with them; the baseline holds the other keys' memory)."""
        for wid, w in self.workers.items():
            memory_now, cpu_now = assigned_now.get(wid, (0.0, 0.0))
            if w.memory_used_mb is not None:
                self.extra[wid] = max(w.memory_used_mb - self.memory[wid] - memory_now, 0.0)
            self.cpu[wid] = max(self.cpu[wid] - cpu_now, 0.0)

    def index_usable(self) -> None:
        """Build the heaps of usable workers (after the kept replicas are counted)."""
        for wid, w in sorted(self.workers.items()):
            if not w.usable:
                continue
            kind = (w.backend, tuple(sorted(w.labels.items())))
            heap = self._kinds.setdefault(kind, [])
            heap.append(self._entry(wid))
            self._members.setdefault(kind, []).append(wid)
            self._kind_of[wid] = heap
        for heap in self._kinds.values():
            heapq.heapify(heap)

    def kinds(self) -> Iterable[list[str]]:
        """The usable workers of each kind."""
        return self._members.values()

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
        """The least loaded usable worker matching ``demand`` where it is allowed, not in
        ``exclude``."""
        best: _Entry | None = None
        for heap in self._heaps_for(demand):
            skipped = []
            while heap:
                entry = heap[0]
                wid = entry[2]
                if entry != self._entry(wid):
                    heapq.heappop(heap)
                elif wid in exclude or not self.allowed(self.workers[wid], demand):
                    skipped.append(heapq.heappop(heap))
                else:
                    if best is None or entry < best:
                        best = entry
                    break
            for entry in skipped:
                heapq.heappush(heap, entry)
        return best


def _without_surplus(
    keep: list[WorkerView], replicas: int, ready: set[str], load: Callable[[str], float]
) -> list[WorkerView]:
    """The holders of a key to keep when more than ``replicas`` hold it: uncordoned and
    least loaded first, plus READY surplus holders while the kept ones are not READY yet (so
    a copy moved by a rebalance stays until its new copy serves)."""
    order = sorted(keep, key=lambda w: (w.cordoned, load(w.worker_id), w.worker_id))
    kept = order[:replicas]
    ready_kept = sum(w.worker_id in ready for w in kept)
    missing = min(replicas, sum(w.worker_id in ready for w in keep)) - ready_kept
    return kept + [w for w in order[replicas:] if w.worker_id in ready][:missing]


def _move(
    loads: _Loads,
    demands: Mapping[Key, Demand],
    desired: Mapping[str, set[Key]],
    holders: Mapping[Key, set[str]],
    ready: Mapping[Key, Iterable[str]],
    drift: float,
) -> tuple[str, Demand] | None:
    """One replica to add on the least loaded usable worker of a kind whose loads differ by
    more than ``drift``: a key of the most loaded one that is fully placed and READY, that
    fits there, and whose move does not make that worker the more loaded of the two (the
    move that lowers the most loaded one most); None when no move helps."""
    best: tuple[float, Key, str] | None = None
    for members in loads.kinds():
        low = min(members, key=lambda w: (loads.load(w), w))
        high = max(members, key=lambda w: (loads.load(w), w))
        if loads.load(high) - loads.load(low) <= drift:
            continue
        target = loads.workers[low]
        for key in desired.get(high, ()):
            d = demands[key]
            if (
                len(holders[key]) != d.replicas
                or not holders[key] <= set(ready.get(key, ()))
                or low in holders[key]
                or not loads.allowed(target, d)
            ):
                continue
            after_high = loads.load(high, -d.memory_mb, -d.cpu)
            if loads.load(low, d.memory_mb, d.cpu) >= after_high:
                continue
            if best is None or (after_high, key) < best[:2]:
                best = (after_high, key, low)
    return None if best is None else (best[2], demands[best[1]])


def place(
    demands: Iterable[Demand],
    workers: Iterable[WorkerView],
    current: Mapping[str, Iterable[Key]],
    ready: Mapping[Key, Iterable[str]] | None = None,
    baseline: Mapping[str, Load] | None = None,
    rebalance_drift: float | None = REBALANCE_DRIFT,
) -> Placement:
    """Compute the desired assignments of the keys of ``demands``.

    ``current`` maps worker id to the keys assigned now (workers that are gone may appear);
    ``ready`` maps a key to the workers where it is READY (has a route). ``baseline`` is the
    load each worker carries from keys placed elsewhere (not in ``demands`` or ``current``):
    placing only the models that changed counts what every worker already holds.
    ``rebalance_drift``: see :data:`REBALANCE_DRIFT` (None: never rebalance).
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
        loads.add(worker_id, d)

    by_key = {d.key: d for d in demand_list}
    assigned_now: dict[str, tuple[float, float]] = {}
    for key, worker_ids in holders_now.items():
        if key in by_key:
            d = by_key[key]
            for wid in worker_ids:
                memory, cpu = assigned_now.get(wid, (0.0, 0.0))
                assigned_now[wid] = (memory + d.memory_mb, cpu + d.cpu)
    loads.measured(assigned_now)

    # 1. keep what still fits (cordoned workers keep theirs; draining/gone lose theirs, and
    # so does a worker whose server ran out of memory with it). Surplus holders are sorted
    # out last, by the load of everything else kept.
    surplus: list[tuple[Demand, list[WorkerView]]] = []
    for d in demand_list:
        keep = [
            live[w]
            for w in holders_now.get(d.key, [])
            if w in live
            and not live[w].draining
            and _matches(live[w], d)
            and d.key not in live[w].avoid
        ]
        if len(keep) > d.replicas:
            surplus.append((d, keep))
            continue
        for w in keep:
            assign(w.worker_id, d)
    for d, keep in surplus:
        keep = _without_surplus(keep, d.replicas, set(ready_on.get(d.key, ())), loads.load)
        for w in keep:
            assign(w.worker_id, d)
    #: A move (or scale-down) is under way: no rebalance starts in the same call.
    moving = bool(surplus)

    # 2. place the missing replicas, most headroom first. Workers holding another version of
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
                if (
                    w.usable
                    and _matches(w, d)
                    and wid not in holders[d.key]
                    and loads.allowed(w, d)
                ):
                    choices.append((loads.load(wid), loads.count[wid], n, wid))
            if not choices:
                reason, memory_bound = explain(d, live.values(), holders[d.key], loads.fits)
                shortfalls[d.key] = Shortfall(len(holders[d.key]), d.replicas, reason, memory_bound)
                break
            assign(min(choices)[3], d)

    # 3. rebalance: one replica more on the least loaded worker of a kind drifted apart (the
    # surplus rule of step 1 removes the old copy in a later call, once the new one is READY).
    if rebalance_drift is not None and not moving:
        move = _move(loads, by_key, desired, holders, ready_on, rebalance_drift)
        if move is not None:
            assign(*move)

    # 4. make-before-break: a draining worker keeps a replica until replacements are READY.
    for d in demand_list:
        ready_elsewhere = len(holders[d.key] & set(ready_on.get(d.key, ())))
        if ready_elsewhere >= d.replicas:
            continue
        for wid in holders_now.get(d.key, []):
            if wid in live and live[wid].draining and _matches(live[wid], d):
                desired[wid].add(d.key)

    return Placement({w: keys for w, keys in desired.items() if keys}, shortfalls)
