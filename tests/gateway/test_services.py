"""Third-party REST services behind the gateway, probed for health: real HTTP servers that are
stopped and started again on their own port."""

from __future__ import annotations

import asyncio
import http.server
import json
from contextlib import ExitStack

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.backends.rest import ServiceProber
from protos.modelgate.v1 import gateway_pb2, gateway_pb2_grpc
from registry import layout
from registry.records import Gateway, Service
from tests.servers.httpd import serve
from tests.servers.zk import wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Service(http.server.BaseHTTPRequestHandler):
    """POST answers which server it is; GET /healthz is 200, GET /sick is 500; no GET /."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        body = json.dumps({"port": self.server.server_address[1]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path not in ("/healthz", "/sick"):
            self.send_error(501)  # as a POST-only API answers GET /
            return
        self.send_response(200 if self.path == "/healthz" else 500)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _health(channel: grpc.Channel, name: str) -> int | None:
    """The health of ``model/<name>`` (None while the gateway does not know it yet)."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        return stub.Check(health_pb2.HealthCheckRequest(service=f"model/{name}"), timeout=5).status
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def _listed(channel: grpc.Channel, name: str) -> gateway_pb2.ModelInfo | None:
    stub = gateway_pb2_grpc.GatewayStub(channel)
    models = stub.ListModels(gateway_pb2.ListModelsRequest(), timeout=5).models
    return next((m for m in models if m.name == name), None)


def _ready(channel: grpc.Channel, name: str) -> int | None:
    """ListModels' ready instances of ``name`` (None while it is not listed)."""
    listed = _listed(channel, name)
    return None if listed is None else listed.ready_instances


def _invoke(channel: grpc.Channel, name: str) -> int:
    """Invoke ``name``; the port of the server that answered."""
    stub = gateway_pb2_grpc.GatewayStub(channel)
    response = stub.Invoke(gateway_pb2.InvokeRequest(model=name, payload=b"x"), timeout=10)
    return json.loads(response.payload)["port"]


def test_a_stopped_service_is_not_serving_until_it_comes_back(gateway, registry):
    with ExitStack() as server:
        url = server.enter_context(serve(_Service))
        service = f"{url}/predict"
        registry.put(layout.service("ocr"), Service(name="ocr", urls=[service]))
        with grpc.insecure_channel(gateway.address) as channel:
            wait_for(lambda: _health(channel, "ocr") == SERVING, what="ocr SERVING")
            assert _ready(channel, "ocr") == 1
            assert _invoke(channel, "ocr") == _port(url)

            server.close()  # the server is down
            wait_for(lambda: _health(channel, "ocr") == NOT_SERVING, what="ocr NOT_SERVING")
            listed = _listed(channel, "ocr")
            assert (
                listed is not None
                and listed.ready_instances == 0
                and listed.versions[0].ready_instances == 0
            )
            assert gateway.metric("modelgate_gateway_routes", {"model": "ocr"}) == 0
            record = wait_for(
                lambda: (
                    (r := registry.read(layout.gateway("gw-test"), Gateway))
                    and r.services["ocr"].down
                    and r
                ),
                what="the gateway record to show ocr down",
            )
            assert record.services["ocr"].ready == []
            assert "ConnectError" in record.services["ocr"].down[service]
            # still called (as an ejected backend is): the caller sees why it failed
            with pytest.raises(grpc.RpcError) as err:
                _invoke(channel, "ocr")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "no instance answered" in err.value.details()

            server.enter_context(serve(_Service, _port(url)))  # back on its own port
            wait_for(lambda: _health(channel, "ocr") == SERVING, what="ocr SERVING again")
            assert _ready(channel, "ocr") == 1
            assert _invoke(channel, "ocr") == _port(url)
            wait_for(
                lambda: (
                    registry.read(layout.gateway("gw-test"), Gateway).services["ocr"].ready
                    == [service]
                ),
                what="the gateway record to show ocr ready",
            )


def test_a_call_while_one_url_is_down_goes_to_the_other(gateway, registry):
    with ExitStack() as a, serve(_Service) as b:
        url_a = a.enter_context(serve(_Service))
        urls = [f"{url_a}/predict", f"{b}/predict"]
        registry.put(layout.service("ocr"), Service(name="ocr", urls=urls, health_path="/healthz"))
        with grpc.insecure_channel(gateway.address) as channel:
            wait_for(lambda: _ready(channel, "ocr") == 2, what="2 ready URLs")
            assert {_invoke(channel, "ocr") for _ in range(2)} == {_port(url_a), _port(b)}

            a.close()
            wait_for(lambda: _ready(channel, "ocr") == 1, what="1 ready URL")
            assert _health(channel, "ocr") == SERVING
            assert [_invoke(channel, "ocr") for _ in range(4)] == [_port(b)] * 4
            # the down URL was skipped, not tried and failed over
            assert gateway.metric("modelgate_gateway_retries_total", {"model": "ocr"}) == 0


def test_probe_rules_with_and_without_a_health_path():
    async def probe(url: str, health_path: str | None) -> str | None:
        async with httpx.AsyncClient() as client:
            return await ServiceProber(client, lambda: None).probe(url, health_path)

    with serve(_Service) as url:
        # no health path: any answer but 502/503/504 means the server is there
        assert asyncio.run(probe(f"{url}/predict", None)) is None
        assert asyncio.run(probe(f"{url}/predict", "/healthz")) is None
        assert asyncio.run(probe(f"{url}/predict", "/sick")) == "GET /sick answered HTTP 500"
    assert asyncio.run(probe(f"{url}/predict", None)).startswith("ConnectError")
