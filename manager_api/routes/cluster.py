"""Workers (list, cordon, uncordon, drain, remove) and gateways."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from manager_api.auth import require_role
from manager_api.context import Caller, Ctx, Manager
from manager_api.errors import PROBLEM_RESPONSES
from manager_api.schemas import WorkerOut
from manager_api.state import ClusterState, worker_view
from registry import layout
from registry.errors import ConflictError, FailedPreconditionError, NotFoundError
from registry.records import Gateway, WorkerSpec

router = APIRouter(prefix="/v1", tags=["workers"], responses=PROBLEM_RESPONSES)

WorkerId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$", description="Worker id.")
]


def _workers(m: Manager) -> dict[str, WorkerOut]:
    with m.view.read() as state:
        return _workers_of(state)


def _workers_of(state: ClusterState) -> dict[str, WorkerOut]:
    out: dict[str, WorkerOut] = {}
    for wid in sorted(set(state.workers) | set(state.assignments)):
        w = state.workers.get(wid)
        spec = state.specs.get(wid, WorkerSpec())
        measured = worker_view(wid, w, spec) if w else None
        keys = sorted(f"{name}@{v}" for name, v in state.assignments.get(wid, {}))
        out[wid] = WorkerOut(
            worker_id=wid,
            registered=w is not None,
            host=w.host if w else None,
            backend=w.backend if w else None,
            address=w.address if w else None,
            labels=dict(w.labels) if w else {},
            capacity_memory_mb=w.capacity_memory_mb if w else None,
            state=w.state if w else None,
            cordoned=spec.cordoned,
            draining=spec.draining,
            heartbeat=w.heartbeat if w else None,
            assignments=keys,
            models=dict(w.models) if w else {},
            capacity_cpu=w.capacity_cpu if w else None,
            usage=w.usage if w else None,
            headroom=measured.headroom if measured else None,
            model_usage=dict(w.model_usage) if w else {},
            ooms=dict(w.ooms) if w else {},
        )
    return out


def _known(m: Manager, worker_id: str) -> None:
    if not (
        m.registry.exists(layout.worker(worker_id))
        or m.registry.exists(layout.assignments(worker_id))
    ):
        raise NotFoundError(f"worker '{worker_id}' is not registered and has no admin state")


def _set_spec(m: Manager, worker_id: str, cordoned: bool, draining: bool) -> WorkerOut:
    _known(m, worker_id)
    path = layout.assignments(worker_id)
    for _attempt in range(5):
        try:
            spec, version = m.registry.get(path, WorkerSpec)
        except NotFoundError:
            spec = WorkerSpec(cordoned=cordoned, draining=draining)
            m.registry.put(path, spec)
            break
        spec.cordoned, spec.draining = cordoned, draining
        try:
            m.registry.update(path, spec, version)
            break
        except ConflictError:
            continue
    m.wrote({path: spec})
    return _workers(m)[worker_id]


@router.get("/workers", response_model=list[WorkerOut], summary="List workers")
def list_workers(m: Ctx, caller: Caller) -> list[WorkerOut]:
    require_role(caller, "viewer", "listing workers")
    return list(_workers(m).values())


@router.get("/workers/{worker_id}", response_model=WorkerOut, summary="Get a worker")
def read_worker(m: Ctx, caller: Caller, worker_id: WorkerId) -> WorkerOut:
    require_role(caller, "viewer", "reading a worker")
    workers = _workers(m)
    if worker_id not in workers:
        raise NotFoundError(f"worker '{worker_id}' is not registered and has no admin state")
    return workers[worker_id]


@router.post("/workers/{worker_id}:cordon", response_model=WorkerOut, summary="No new replicas")
def cordon(m: Ctx, caller: Caller, worker_id: WorkerId) -> WorkerOut:
    require_role(caller, "admin", "cordoning a worker")
    return _set_spec(m, worker_id, cordoned=True, draining=False)


@router.post("/workers/{worker_id}:uncordon", response_model=WorkerOut, summary="Accept again")
def uncordon(m: Ctx, caller: Caller, worker_id: WorkerId) -> WorkerOut:
    require_role(caller, "admin", "uncordoning a worker")
    return _set_spec(m, worker_id, cordoned=False, draining=False)


@router.post(
    "/workers/{worker_id}:drain",
    response_model=WorkerOut,
    summary="Re-place its replicas elsewhere (each kept until its replacement is READY)",
)
def drain(m: Ctx, caller: Caller, worker_id: WorkerId) -> WorkerOut:
    require_role(caller, "admin", "draining a worker")
    return _set_spec(m, worker_id, cordoned=True, draining=True)


@router.delete("/workers/{worker_id}", status_code=204, summary="Forget a worker")
def remove_worker(
    m: Ctx,
    caller: Caller,
    worker_id: WorkerId,
    force: Annotated[bool, Query(description="Also remove a worker that is still alive.")] = False,
) -> Response:
    require_role(caller, "admin", "removing a worker")
    _known(m, worker_id)
    alive = m.registry.exists(layout.worker(worker_id))
    if alive and not force:
        raise FailedPreconditionError(
            f"worker '{worker_id}' is still registered; drain it and stop its agent first, "
            "or remove it with force=true"
        )
    m.registry.delete(layout.assignments(worker_id), recursive=True)
    if alive:
        m.registry.delete(layout.worker(worker_id))
    m.wrote({layout.assignments(worker_id): None, layout.worker(worker_id): None})
    return Response(status_code=204)


@router.get(
    "/gateways",
    response_model=list[Gateway],
    summary="List gateways: plugins serving (and their load errors), REST service health",
    tags=["gateways"],
)
def list_gateways(m: Ctx, caller: Caller) -> list[Gateway]:
    require_role(caller, "viewer", "listing gateways")
    gateways = m.registry.read_children(layout.GATEWAYS, Gateway)
    return [g for _, g in sorted(gateways.items())]
