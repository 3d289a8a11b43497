"""The manager's per-process context, handed to endpoints through FastAPI dependencies."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from manager_api.auth import AuditLog, Principal, TokenStore
from manager_api.blobs import BlobStore
from manager_api.load import LoadTracker
from manager_api.metrics import ManagerMetrics
from manager_api.reconcile import Reconciler
from manager_api.settings import ManagerSettings
from manager_api.state import ClusterView
from registry import Registry
from registry.records import Record

log = logging.getLogger("manager_api.context")


@dataclass
class Manager:
    """Everything an endpoint may use; built by :func:`manager_api.app.create_app`."""

    settings: ManagerSettings
    registry: Registry
    blobs: BlobStore
    tokens: TokenStore
    audit: AuditLog
    metrics: ManagerMetrics
    manager_id: str
    #: The cluster state from ZooKeeper watches that status and worker reads use.
    view: ClusterView
    reconciler: Reconciler | None = None

    def wrote(self, writes: Mapping[str, Record | None]) -> None:
        """Call after this API's own writes (path -> record, None: deleted): waits, bounded,
        until the cluster view shows them, so the caller's next read sees its writes. The
        view's change is what asks the reconcile loop for a pass."""
        if not self.view.wait_written(writes):
            log.warning("the cluster view does not show %s yet", ", ".join(sorted(writes)))


def get_manager(request: Request) -> Manager:
    manager: Manager = request.app.state.manager
    return manager


_bearer = HTTPBearer(auto_error=False, description="A token from the tokens file.")


def get_principal(
    request: Request,
    manager: Annotated[Manager, Depends(get_manager)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    principal = manager.tokens.authenticate(credentials.credentials if credentials else None)
    request.state.principal = principal
    return principal


def get_tracker(request: Request) -> LoadTracker:
    tracker: LoadTracker = request.app.state.load
    return tracker


Ctx = Annotated[Manager, Depends(get_manager)]
Caller = Annotated[Principal, Depends(get_principal)]
#: The load tracker of the app's lifespan (per-model load from the gateways).
Tracker = Annotated[LoadTracker, Depends(get_tracker)]
