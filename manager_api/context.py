"""The manager's per-process context, handed to endpoints through FastAPI dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from manager_api.auth import AuditLog, Principal, TokenStore
from manager_api.blobs import BlobStore
from manager_api.metrics import ManagerMetrics
from manager_api.reconcile import Reconciler
from manager_api.settings import ManagerSettings
from registry import Registry


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
    reconciler: Reconciler | None = None

    def kick(self) -> None:
        """Ask the local reconcile loop for a pass (it only runs one while leader)."""
        if self.reconciler is not None:
            self.reconciler.kick()


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


Ctx = Annotated[Manager, Depends(get_manager)]
Caller = Annotated[Principal, Depends(get_principal)]
