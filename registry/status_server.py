"""Every role's status port: ``/healthz`` (JSON) and ``/metrics`` (Prometheus), one ASGI app.

A Starlette app served by uvicorn inside the role's own asyncio loop. ``GET`` and ``HEAD``
are answered; any other method gets 405 with an ``Allow`` header. ``/healthz`` (also ``/``)
is ``{"ok": <bool>, ...the role's details}``, 200 when ok and 503 when not.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("registry.status_server")

#: ``health()`` -> (healthy, details shown in /healthz).
Health = Callable[[], tuple[bool, dict[str, Any]]]


def _exposition(registry: CollectorRegistry, accept: str, encoding: str, names: list[str]) -> bytes:
    encoder, _ = choose_encoder(accept)
    body = encoder(registry.restricted_registry(names) if names else registry)
    return gzip.compress(body) if "gzip" in encoding else body


def _metrics_endpoint(registry: CollectorRegistry) -> Callable[[Request], Awaitable[Response]]:
    """``/metrics`` as prometheus_client's own app serves it (format by ``Accept``, gzip,
    ``?name[]=`` filters), rendered in a thread: at thousands of models the text takes
    hundreds of milliseconds, which must not stall the role's serving loop."""

    async def metrics(request: Request) -> Response:
        accept = request.headers.get("accept", "")
        encoding = request.headers.get("accept-encoding", "")
        names = request.query_params.getlist("name[]")
        body = await asyncio.to_thread(_exposition, registry, accept, encoding, names)
        headers = {"Content-Encoding": "gzip"} if "gzip" in encoding else {}
        return Response(body, media_type=choose_encoder(accept)[1], headers=headers)

    return metrics


def status_app(registry: CollectorRegistry, health: Health) -> Starlette:
    """The ASGI app: ``/healthz`` and ``/`` from ``health()``, ``/metrics`` from ``registry``."""

    async def healthz(_request: Request) -> JSONResponse:
        ok, details = health()
        return JSONResponse({"ok": ok, **details}, status_code=200 if ok else 503)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/", healthz, methods=["GET", "HEAD"]),
            Route("/metrics", _metrics_endpoint(registry), methods=["GET", "HEAD"]),
        ]
    )


class _InLoopServer(uvicorn.Server):
    """uvicorn without its signal handlers: the role's loop owns SIGTERM/SIGINT (drain)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class StatusServer:
    """Serves :func:`status_app` on ``host:port`` (0 picks a free port; read ``port`` after
    :meth:`start`)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        config = uvicorn.Config(
            status_app(registry, health),
            host=host,
            port=port,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
        )
        self.host = host
        self.requested_port = port
        self._server = _InLoopServer(config)
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind (``OSError`` if the port is taken) and serve; returns the bound port."""
        family = socket.getaddrinfo(self.host, self.requested_port, type=socket.SOCK_STREAM)[0][0]
        # NOTE: bound here rather than by uvicorn, which exits the process on a bind error.
        sock = socket.create_server((self.host, self.requested_port), family=family)
        self.port = sock.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[sock]), name="status server"
        )
        while not self._server.started:  # bounded: startup fails the task or sets started
            if self._task.done():
                await self._task
                raise OSError(f"status server on {self.host}:{self.port} did not start")
            await asyncio.sleep(0.01)
        log.info("status server on %s:%d (/healthz, /metrics)", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None
