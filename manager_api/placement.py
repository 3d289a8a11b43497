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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Key = tuple[str, int]
"""``(model, version)``."""


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


def place(
    demands: Iterable[Demand],
    workers: Iterable[WorkerView],
    current: Mapping[str, Iterable[Key]],
    ready: Mapping[Key, Iterable[str]] | None = None,
) -> Placement:
    """Compute the desired assignments.

    ``current`` maps worker id to the keys assigned now (workers that are gone may appear);
    ``ready`` maps a key to the workers where it is READY (has a route).
    """
    live = {w.worker_id: w for w in workers}
    ready_on = {k: set(v) for k, v in (ready or {}).items()}
    demand_list = sorted(demands, key=lambda d: d.key)
    memory = {d.key: d.memory_mb for d in demand_list}
    desired: dict[str, set[Key]] = {w: set() for w in live}
    used: dict[str, int] = dict.fromkeys(live, 0)
    holders_now: dict[Key, list[str]] = {}
    for worker_id, keys in current.items():
        for key in keys:
            holders_now.setdefault(key, []).append(worker_id)

    def assign(worker_id: str, key: Key) -> None:
        desired[worker_id].add(key)
        used[worker_id] += memory.get(key, 0)

    # 1. keep what still fits (cordoned workers keep theirs; draining/gone lose theirs).
    for d in demand_list:
        keep = [
            live[w]
            for w in holders_now.get(d.key, [])
            if w in live and not live[w].draining and _matches(live[w], d)
        ]
        keep.sort(key=lambda w: (w.cordoned, w.worker_id))
        for w in keep[: d.replicas]:
            assign(w.worker_id, d.key)

    def load_key(w: WorkerView, model: str) -> tuple[float, int, int, str]:
        cap = w.capacity_memory_mb
        share = used[w.worker_id] / cap if cap else 0.0
        same = sum(1 for m, _ in desired[w.worker_id] if m == model)
        return (share, len(desired[w.worker_id]), same, w.worker_id)

    # 2. place the missing replicas, least loaded first.
    shortfalls: dict[Key, Shortfall] = {}
    for d in demand_list:
        holders = {w for w, keys in desired.items() if d.key in keys}
        while len(holders) < d.replicas:
            candidates = [
                w
                for w in live.values()
                if w.usable
                and _matches(w, d)
                and w.worker_id not in holders
                and (
                    w.capacity_memory_mb is None
                    or used[w.worker_id] + d.memory_mb <= w.capacity_memory_mb
                )
            ]
            if not candidates:
                shortfalls[d.key] = Shortfall(
                    len(holders), d.replicas, explain(d, live.values(), holders, used)
                )
                break
            best = min(candidates, key=lambda w: load_key(w, d.model))
            assign(best.worker_id, d.key)
            holders.add(best.worker_id)

    # 3. make-before-break: a draining worker keeps a replica until replacements are READY.
    for d in demand_list:
        holders = {w for w, keys in desired.items() if d.key in keys}
        ready_elsewhere = len(holders & ready_on.get(d.key, set()))
        if ready_elsewhere >= d.replicas:
            continue
        for wid in holders_now.get(d.key, []):
            if wid in live and live[wid].draining and _matches(live[wid], d):
                assign(wid, d.key)

    return Placement({w: keys for w, keys in desired.items() if keys}, shortfalls)
