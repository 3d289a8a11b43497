"""Third-party REST model services (``/services/<name>``): POST the payload, map errors.

They take ``Invoke`` payloads only: every tensor API is refused with :class:`RestServiceError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import grpc
import httpx

from gateway import codec
from gateway.backends.base import Backend, Call, TensorCall
from gateway.errors import (
    BackendStatusError,
    ConnectionFailure,
    DeadlineExceededError,
    RestServiceError,
)
from gateway.table import Instance
from registry.records import Service, ServiceHealth

log = logging.getLogger("gateway.backends.rest")

#: Seconds between two probes of one URL.
PROBE_INTERVAL_S = 2.0
#: Longest a probe may take before the URL counts as down.
PROBE_TIMEOUT_S = 2.0
#: What a proxy answers when the server behind it is not there.
_PROXY_DOWN = frozenset({502, 503, 504})

#: HTTP status -> gRPC code (the usual gRPC-HTTP mapping).
HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(status: int) -> grpc.StatusCode:
    if status in HTTP_TO_GRPC:
        return HTTP_TO_GRPC[status]
    if status in (502, 503):
        return grpc.StatusCode.UNAVAILABLE
    if 400 <= status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


class RestBackend(Backend):
    """One shared httpx client; :meth:`post` is one ``Invoke`` attempt against one URL.

    Every tensor API is refused with :class:`RestServiceError`.
    """

    def __init__(self) -> None:
        self.client = httpx.AsyncClient(follow_redirects=False)

    async def post(
        self, url: str, payload: bytes, content_type: str, budget: float
    ) -> tuple[bytes, str]:
        try:
            response = await self.client.post(
                url,
                content=payload,
                headers={"content-type": content_type or "application/octet-stream"},
                timeout=budget,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise ConnectionFailure(url, f"{type(err).__name__}: {err}") from None
        except httpx.TimeoutException:
            raise DeadlineExceededError(
                f"service {url} did not answer within the deadline"
            ) from None
        except httpx.HTTPError as err:
            raise ConnectionFailure(url, f"{type(err).__name__}: {err}") from None
        if response.status_code in (502, 503):
            raise ConnectionFailure(url, f"HTTP {response.status_code}")
        if response.status_code >= 400:
            text = response.text[:300].strip()
            raise BackendStatusError(
                grpc_code(response.status_code),
                f"service {url} answered HTTP {response.status_code}: {text}",
                url,
            )
        return response.content, response.headers.get("content-type", "application/octet-stream")

    async def close(self) -> None:
        await self.client.aclose()

    async def _refuse(self, call: Call, instance: Instance, budget: float) -> bytes:
        raise RestServiceError(call.model)

    tfs_predict = tfs_metadata = tfs_only = _refuse
    kserve_infer = kserve_metadata = kserve_only = _refuse

    async def infer(self, call: TensorCall, instance: Instance, budget: float) -> codec.Named:
        raise RestServiceError(call.model)


class ServiceProber:
    """Probes every URL of every REST service off the serving path, one task per URL.

    A probe is ``GET`` on the URL's origin + the service's ``health_path`` (up on 2xx), or
    ``GET /`` on the origin when it has none (up on any answer but 502/503/504: the server
    is there). ``down`` maps service -> URL -> what the failed probe saw; a URL counts as
    up until its first probe. ``on_change`` is called when a URL goes down or comes back.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        on_change: Callable[[], None],
        *,
        interval: float = PROBE_INTERVAL_S,
        timeout: float = PROBE_TIMEOUT_S,
    ) -> None:
        self.client = client
        self.on_change = on_change
        self.interval = interval
        self.timeout = timeout
        self.down: dict[str, dict[str, str]] = {}
        self._tasks: dict[tuple[str, str, str | None], asyncio.Task[None]] = {}

    def sync(self, services: Mapping[str, Service]) -> None:
        """Probe the URLs of ``services``: start the new ones, stop the ones gone."""
        wanted = {(name, url, s.health_path) for name, s in services.items() for url in s.urls}
        for key in self._tasks.keys() - wanted:
            self._tasks.pop(key).cancel()
            self._mark(key[0], key[1], None)
        for key in wanted - self._tasks.keys():
            self._tasks[key] = asyncio.create_task(self._watch(*key), name=f"probe {key[1]}")

    def health(self, services: Mapping[str, Service]) -> dict[str, ServiceHealth]:
        """What the probes say of each of ``services`` (for the gateway's record)."""
        out = {}
        for name, service in services.items():
            down = self.down.get(name, {})
            ready = [url for url in service.urls if url not in down]
            out[name] = ServiceHealth(ready=ready, down=dict(down))
        return out

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, name: str, url: str, health_path: str | None) -> None:
        while True:
            problem = await self.probe(url, health_path)
            if self._mark(name, url, problem):
                if problem is None:
                    log.info("service %s: %s answers its health probe again", name, url)
                else:
                    log.warning("service %s: %s fails its health probe: %s", name, url, problem)
                self.on_change()
            await asyncio.sleep(self.interval)

    def _mark(self, name: str, url: str, problem: str | None) -> bool:
        """Record a probe's outcome; True when the URL went down or came back."""
        down = self.down.setdefault(name, {})
        was_down = url in down
        if problem is None:
            down.pop(url, None)
        elif not was_down:
            down[url] = problem
        if not down:
            del self.down[name]
        return was_down != (problem is not None)

    async def probe(self, url: str, health_path: str | None) -> str | None:
        """None when ``url`` passes the probe, else what the probe saw."""
        try:
            target = httpx.URL(url).join(health_path or "/")
            async with self.client.stream("GET", target, timeout=self.timeout) as response:
                status = response.status_code
        except httpx.TimeoutException:
            return f"no answer within {self.timeout:g}s"
        except (httpx.HTTPError, httpx.InvalidURL) as err:
            return f"{type(err).__name__}: {err}"
        if status in _PROXY_DOWN or (health_path and not 200 <= status < 300):
            return f"GET {target.path} answered HTTP {status}"
        return None
