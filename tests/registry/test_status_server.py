"""registry.status_server: the one /healthz + /metrics server every role runs."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from registry.status_server import StatusServer


def test_healthz_metrics_methods_and_port_zero() -> None:
    registry = CollectorRegistry()
    Counter("demo_calls", "calls", registry=registry).inc(3)
    health: dict[str, Any] = {"ok": True}

    async def scenario() -> int:
        server = StatusServer(
            "127.0.0.1", 0, registry, lambda: (health["ok"], {"role": "demo", "models": 2})
        )
        port = await server.start()
        assert port == server.port and port > 0
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                ok = await client.get("/healthz")
                assert ok.status_code == 200
                assert ok.json() == {"ok": True, "role": "demo", "models": 2}
                assert (await client.get("/")).json() == ok.json()
                head = await client.head("/healthz")
                assert head.status_code == 200 and head.content == b""
                metrics = await client.get("/metrics")
                assert metrics.status_code == 200 and "demo_calls_total 3.0" in metrics.text
                assert metrics.headers["content-type"].startswith("text/plain")
                assert (await client.head("/metrics")).status_code == 200
                for method, path in (("POST", "/healthz"), ("DELETE", "/metrics")):
                    refused = await client.request(method, path)
                    assert refused.status_code == 405
                    assert set(refused.headers["allow"].split(", ")) == {"GET", "HEAD"}
                assert (await client.get("/nope")).status_code == 404
                health["ok"] = False
                down = await client.get("/healthz")
                assert down.status_code == 503 and down.json()["ok"] is False
        finally:
            await server.stop()
        return port

    port = asyncio.run(scenario())
    with pytest.raises(httpx.ConnectError):  # stopped: the port no longer answers
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_a_taken_port_is_a_clear_oserror() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = StatusServer("127.0.0.1", port, CollectorRegistry(), lambda: (True, {}))
        with pytest.raises(OSError, match="in use"):
            asyncio.run(server.start())


def test_metrics_render_off_the_serving_loop_in_every_format() -> None:
    # NOTE: at fleet size the text takes long to render: the loop's thread must not do it
    threads: list[int] = []

    class Recording(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            threads.append(threading.get_ident())
            yield CounterMetricFamily("demo_calls", "calls", value=1)

    registry = CollectorRegistry()
    registry.register(Recording())
    Counter("other_calls", "calls", registry=registry).inc()

    async def scenario() -> None:
        server = StatusServer("127.0.0.1", 0, registry, lambda: (True, {}))
        port = await server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                plain = await client.get("/metrics", headers={"accept-encoding": "identity"})
                assert "content-encoding" not in plain.headers
                assert "demo_calls_total 1.0" in plain.text and "other_calls_total" in plain.text
                zipped = await client.get("/metrics", headers={"accept-encoding": "gzip"})
                assert zipped.headers["content-encoding"] == "gzip"
                assert "demo_calls_total 1.0" in zipped.text  # httpx decodes it
                only = await client.get("/metrics", params={"name[]": "other_calls_total"})
                assert "other_calls_total" in only.text and "demo_calls" not in only.text
                openmetrics = await client.get(
                    "/metrics", headers={"accept": "application/openmetrics-text"}
                )
                assert openmetrics.headers["content-type"].startswith(
                    "application/openmetrics-text"
                )
                assert openmetrics.text.rstrip().endswith("# EOF")
        finally:
            await server.stop()
        assert threads and threading.get_ident() not in threads

    asyncio.run(scenario())
