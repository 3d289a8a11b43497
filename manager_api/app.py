"""The FastAPI application factory (settings and registry passed in; no globals)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry

from manager_api.auth import AuditLog, Principal, TokenStore
from manager_api.autoscale import Autoscaler, Policy
from manager_api.blobs import BlobStore
from manager_api.context import Manager
from manager_api.errors import install_error_handlers, problem
from manager_api.load import LoadTracker
from manager_api.metrics import ManagerMetrics
from manager_api.reconcile import Reconciler
from manager_api.routes import catalog, cluster, load, models, plugins, system
from manager_api.settings import ManagerSettings
from manager_api.state import ClusterView
from manager_api.ui import routes as console
from registry import Registry, layout
from registry.records import Group
from registry.version import version

_MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
#: Largest JSON body accepted. NOTE: a record over ZooKeeper's 1 MiB node limit would make
#: the server drop the session, so oversized bodies are refused before they get near it.
MAX_JSON_BODY = 256 * 1024


def _too_large(request: Request) -> Response | None:
    """413 for a non-upload body over MAX_JSON_BODY (uploads have their own limits)."""
    if request.headers.get("content-type", "").startswith("multipart/"):
        return None
    try:
        length = int(request.headers.get("content-length", "0"))
    except ValueError:
        return problem(400, "Bad request", "invalid Content-Length header")
    if length > MAX_JSON_BODY:
        return problem(
            413,
            "Payload too large",
            f"request body of {length} bytes is over the limit of {MAX_JSON_BODY} bytes",
        )
    return None


DESCRIPTION = """\
Admin API of modelgate: models, versions, traffic, online/offline, status, workers,
gateways, plugins, services, groups and blobs.

Authenticate with `Authorization: Bearer <token>` (tokens file; roles admin, operator,
viewer, internal). Errors are `application/problem+json` with a `detail` that says what
to fix.
"""


def create_app(
    settings: ManagerSettings,
    registry: Registry,
    *,
    tokens: TokenStore | None = None,
    metrics_registry: CollectorRegistry | None = None,
    start_reconciler: bool | None = None,
) -> FastAPI:
    """Build the manager's app around a started ``registry``.

    ``tokens`` defaults to ``settings.tokens_file``. The reconcile loop (leader election)
    starts and stops with the app's lifespan when ``settings.reconcile`` is set, with the
    autoscaler on the leader; the load tracker (gateway scrapes every
    ``settings.load_interval_s``) always does.
    """
    if tokens is None:
        if settings.tokens_file is None:
            raise ValueError("no tokens file: set --tokens-file / MODELGATE_MANAGER_TOKENS_FILE")
        tokens = TokenStore.load(settings.tokens_file)
    metrics = ManagerMetrics(metrics_registry or CollectorRegistry())
    manager_id = settings.manager_id or f"{socket.gethostname()}:{os.getpid()}"
    view = ClusterView(registry)
    manager = Manager(
        settings=settings,
        registry=registry,
        blobs=BlobStore(settings.blob_dir),
        tokens=tokens,
        audit=AuditLog(settings.audit_log),
        metrics=metrics,
        manager_id=manager_id,
        view=view,
    )
    run_loop = settings.reconcile if start_reconciler is None else start_reconciler
    if run_loop:
        autoscaler = Autoscaler(
            registry,
            metrics,
            manager.audit,
            tracker=lambda: app.state.load,  # the lifespan's started tracker
            policy=Policy.of(settings),
            interval_s=settings.autoscale_interval_s,
        )
        manager.reconciler = Reconciler(
            registry,
            metrics,
            manager_id,
            interval=settings.reconcile_interval_s,
            view=view,
            autoscaler=autoscaler,
        )

    #: NOTE: an app's lifespan may run more than once at a time (a test client and a
    #: schema fuzzer on one app): the view starts with the first and closes with the last.
    lifespans = 0

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        nonlocal lifespans
        if not registry.exists(layout.group("default")):
            try:
                registry.create(
                    layout.group("default"), Group(name="default", description="default group")
                )
            except Exception:  # created concurrently by another manager
                pass
        if lifespans == 0:
            await asyncio.to_thread(view.start)
        lifespans += 1
        if manager.reconciler is not None:
            manager.reconciler.start()
        # NOTE: one tracker per lifespan run (a test harness may run the lifespan twice)
        tracker = _app.state.load = LoadTracker(registry, interval_s=settings.load_interval_s)
        tracker.start()
        try:
            yield
        finally:
            await tracker.stop()
            if manager.reconciler is not None:
                manager.reconciler.stop()
            lifespans -= 1
            if lifespans == 0:
                view.close()

    app = FastAPI(
        title="modelgate manager",
        version=version(),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.manager = manager
    # replaced by a started one in the lifespan
    app.state.load = LoadTracker(registry, interval_s=settings.load_interval_s)
    install_error_handlers(app)
    for module in (models, cluster, plugins, catalog, system, load):
        app.include_router(module.router)
    console.mount(app)

    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.monotonic()
        response = _too_large(request) or await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        metrics.requests.labels(request.method, template, str(response.status_code)).inc()
        metrics.request_seconds.labels(request.method, template).observe(time.monotonic() - started)
        if request.method in _MUTATING:
            principal: Principal | None = getattr(request.state, "principal", None)
            manager.audit.record(
                who=principal.name if principal else "anonymous",
                role=principal.role if principal else "-",
                action=f"{request.method} {template}",
                target=request.url.path,
                status=response.status_code,
            )
        return response

    return app
