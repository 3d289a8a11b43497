"""Blobs, health, metrics and the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from manager_api.auth import require_role
from manager_api.context import Caller, Ctx
from manager_api.errors import PROBLEM_RESPONSES
from manager_api.schemas import AuditEntry, Health

router = APIRouter(responses=PROBLEM_RESPONSES)


@router.get(
    "/v1/blobs/{sha256}",
    tags=["blobs"],
    summary="Download a blob (plugins, uploaded model archives)",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def read_blob(
    m: Ctx,
    caller: Caller,
    sha256: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the blob.")],
) -> FileResponse:
    # Every role may read blobs, including the ``internal`` one workers and gateways use.
    path = m.blobs.path(sha256)
    return FileResponse(
        path, media_type="application/octet-stream", headers={"ETag": f'"{sha256}"'}
    )


@router.get("/v1/audit", response_model=list[AuditEntry], tags=["audit"], summary="Audit log")
def read_audit(m: Ctx, caller: Caller) -> list[AuditEntry]:
    require_role(caller, "admin", "reading the audit log")
    return [AuditEntry(**e) for e in m.audit.recent()]


@router.get("/healthz", response_model=Health, tags=["system"], summary="Liveness")
def healthz(m: Ctx) -> JSONResponse:
    ok = m.registry.connected
    body = Health(
        status="ok" if ok else "degraded",
        zookeeper=ok,
        leader=bool(m.reconciler and m.reconciler.is_leader),
        manager_id=m.manager_id,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", tags=["system"], summary="Prometheus metrics", response_class=Response)
def metrics(m: Ctx) -> Response:
    return Response(generate_latest(m.metrics.registry), media_type=CONTENT_TYPE_LATEST)
