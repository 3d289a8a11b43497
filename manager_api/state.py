"""Reading the cluster's desired and observed state from ZooKeeper (via registry/)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TypeVar

from manager_api.placement import Demand, Key, WorkerView
from registry import Registry, layout
from registry.errors import InvalidArgumentError, InvalidRecordError
from registry.records import Assignment, Model, ModelVersion, Record, Worker, WorkerSpec

log = logging.getLogger("manager_api.state")

R = TypeVar("R", bound=Record)


@dataclass
class ClusterState:
    """One (non-atomic) read of everything placement and status need."""

    models: dict[str, Model] = field(default_factory=dict)
    versions: dict[str, dict[int, ModelVersion]] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)
    specs: dict[str, WorkerSpec] = field(default_factory=dict)
    #: worker id -> assigned keys (workers that are gone included).
    assignments: dict[str, dict[Key, Assignment]] = field(default_factory=dict)
    #: key -> workers with a route (READY).
    routes: dict[Key, set[str]] = field(default_factory=dict)

    def worker_views(self) -> list[WorkerView]:
        views = []
        for wid, w in self.workers.items():
            spec = self.specs.get(wid, WorkerSpec())
            views.append(
                WorkerView(
                    worker_id=wid,
                    backend=w.backend,
                    labels=dict(w.labels),
                    capacity_memory_mb=w.capacity_memory_mb,
                    ready=w.backend_live,
                    cordoned=spec.cordoned or w.state == "cordoned",
                    draining=spec.draining or w.state == "draining",
                )
            )
        return views

    def active_versions(self, model: Model) -> list[int]:
        """Versions that get replicas: weighted or labelled ones, else the newest."""
        known = self.versions.get(model.name, {})
        if model.state != "online" or not known:
            return []
        active = {int(v) for v, w in model.traffic.items() if w > 0 and int(v) in known}
        active |= {v for v, rec in known.items() if rec.labels}
        return sorted(active) if active else [max(known)]

    def demands(self) -> list[Demand]:
        out = []
        for model in self.models.values():
            for v in self.active_versions(model):
                out.append(
                    Demand(
                        model=model.name,
                        version=v,
                        backend=model.backend,
                        replicas=model.replicas,
                        constraints=dict(model.constraints),
                        memory_mb=model.memory_mb,
                    )
                )
        return out

    def current(self) -> dict[str, set[Key]]:
        return {w: set(keys) for w, keys in self.assignments.items()}


def _children_records(reg: Registry, path: str, record_type: type[R]) -> dict[str, R]:
    out: dict[str, R] = {}
    for name in reg.children(path):
        try:
            rec = reg.read(f"{path}/{name}", record_type)
        except InvalidRecordError as err:
            log.warning("skipping %s", err)
            continue
        if rec is not None:
            out[name] = rec
    return out


def read_state(reg: Registry, *, with_routes: bool = True) -> ClusterState:
    """Read models, versions, workers, worker specs, assignments and (optionally) routes."""
    st = ClusterState()
    st.models = _children_records(reg, layout.MODELS, Model)
    for name in st.models:
        st.versions[name] = {
            rec.version: rec
            for rec in _children_records(reg, layout.versions(name), ModelVersion).values()
        }
    st.workers = _children_records(reg, layout.WORKERS, Worker)
    for wid in reg.children(layout.ASSIGNMENTS):
        try:
            path = layout.assignments(wid)
        except InvalidArgumentError:
            continue
        try:
            st.specs[wid] = reg.read(path, WorkerSpec) or WorkerSpec()
        except InvalidRecordError as err:
            log.warning("ignoring admin state: %s", err)
            st.specs[wid] = WorkerSpec()
        keys: dict[Key, Assignment] = {}
        for child, rec in _children_records(reg, path, Assignment).items():
            try:
                keys[layout.parse_assignment_key(child)] = rec
            except InvalidArgumentError:
                log.warning("ignoring odd assignment node %s/%s", path, child)
        st.assignments[wid] = keys
    if with_routes:
        for model in reg.children(layout.ROUTES):
            try:
                model_path = layout.model_routes(model)
            except InvalidArgumentError:
                continue
            for v in reg.children(model_path):
                if not v.isdigit() or int(v) < 1:
                    continue
                workers = reg.children(layout.version_routes(model, int(v)))
                if workers:
                    st.routes[(model, int(v))] = set(workers)
    return st
