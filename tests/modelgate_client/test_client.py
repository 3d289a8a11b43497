"""modelgate_client against a tiny in-process grpc.aio fake of ``modelgate.v1.Gateway``.

The fake speaks the real wire protocol (a real server on a free port), so deadlines,
metadata, status codes and retries go through grpc exactly as against a gateway.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import grpc.aio
import numpy as np
import pytest

from modelgate_client import (
    NO_RETRY,
    AsyncGatewayClient,
    DeadlineExceededError,
    GatewayClient,
    GatewayError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    UnavailableError,
)
from protos.modelgate.v1 import gateway_pb2, gateway_pb2_grpc

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)


@dataclass
class FakeGateway(gateway_pb2_grpc.GatewayServicer):
    """Adds one to every FP32 input; ``failures`` are returned (in order) before success."""

    failures: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)
    hang: bool = False
    #: When set, answered as an "image/png" payload instead of JSON tensors.
    raw_answer: bytes | None = None
    requests: list[gateway_pb2.InvokeRequest] = field(default_factory=list)
    remaining: list[float | None] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)

    async def Invoke(
        self, request: gateway_pb2.InvokeRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.InvokeResponse:
        self.requests.append(request)
        self.remaining.append(context.time_remaining())
        self.metadata.append({k: v for k, v in context.invocation_metadata() or ()})
        if self.hang:
            await asyncio.Event().wait()  # until the caller's deadline cancels us
        if self.failures:
            code, message = self.failures.pop(0)
            await context.abort(code, message)
        if self.raw_answer is not None:
            return gateway_pb2.InvokeResponse(
                model=request.model, payload=self.raw_answer, content_type="image/png"
            )
        doc = json.loads(request.payload)
        outputs = [
            {
                "name": t["name"].replace("INPUT", "OUTPUT"),
                "shape": t["shape"],
                "datatype": t["datatype"],
                "data": [x + 1 for x in t["data"]],
            }
            for t in doc["inputs"]
        ]
        return gateway_pb2.InvokeResponse(
            model=request.model,
            version=request.version or "1",
            payload=json.dumps({"outputs": outputs}).encode(),
            content_type="application/json",
            request_id=request.request_id,
        )

    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListModelsResponse:
        response = gateway_pb2.ListModelsResponse()
        model = response.models.add(
            name="add_one", backend="triton", ready_instances=2, group=request.group or "default"
        )
        model.versions.add(version="1", labels=["stable"], weight=80, ready_instances=1)
        model.versions.add(version="2", labels=["canary"], weight=20, ready_instances=1)
        return response


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeGateway, str]]:
    servicer = FakeGateway()
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


X = np.array([[1, 2], [3, 4]], dtype=np.float32)


async def test_invoke_round_trip_sends_request_fields_and_decodes_outputs(fake) -> None:
    servicer, address = fake
    async with AsyncGatewayClient(address, timeout=5.0) as client:
        result = await client.invoke("add_one", {"INPUT0": X}, version=2, label="canary")

    out = result.outputs["OUTPUT0"]
    assert out.dtype == np.float32 and out.shape == (2, 2)
    np.testing.assert_array_equal(out, X + 1)
    assert (result.model, result.version) == ("add_one", "2")
    (request,) = servicer.requests
    assert request.model == "add_one"
    assert request.version == "2" and request.version_label == "canary"
    assert request.content_type == "application/json"
    assert request.request_id and result.request_id == request.request_id
    assert json.loads(request.payload) == {
        "inputs": [{"name": "INPUT0", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }


async def test_every_call_carries_a_deadline_and_the_metadata(fake) -> None:
    servicer, address = fake
    async with AsyncGatewayClient(address, timeout=60.0, metadata=[("x-tenant", "t1")]) as client:
        await client.invoke("add_one", {"INPUT0": X})
        await client.invoke("add_one", {"INPUT0": X}, timeout=3.0)

    # The server sees each call's own deadline (grpc rounds the header up a little).
    default, explicit = servicer.remaining
    assert default is not None and 30 < default <= 61
    assert explicit is not None and 0 < explicit <= 4
    assert all(md.get("x-tenant") == "t1" for md in servicer.metadata)


async def test_unavailable_is_retried_with_the_same_request_id(fake) -> None:
    servicer, address = fake
    servicer.failures = [
        (grpc.StatusCode.UNAVAILABLE, "model 'add_one' has no ready instance"),
        (grpc.StatusCode.UNAVAILABLE, "model 'add_one' has no ready instance"),
    ]
    async with AsyncGatewayClient(address, timeout=5.0, retry=FAST_RETRY) as client:
        result = await client.invoke("add_one", {"INPUT0": X})

    np.testing.assert_array_equal(result.outputs["OUTPUT0"], X + 1)
    assert len(servicer.requests) == 3
    assert len({r.request_id for r in servicer.requests}) == 1


async def test_unavailable_gives_up_after_max_attempts(fake) -> None:
    servicer, address = fake
    servicer.failures = [(grpc.StatusCode.UNAVAILABLE, "model 'add_one' has no ready instance")] * 5
    async with AsyncGatewayClient(address, timeout=5.0, retry=FAST_RETRY) as client:
        with pytest.raises(UnavailableError) as info:
            await client.invoke("add_one", {"INPUT0": X})

    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert info.value.retryable and info.value.attempts == 3
    assert "no ready instance" in info.value.message
    assert len(servicer.requests) == 3


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.PERMISSION_DENIED, GatewayError),
    ],
)
async def test_other_codes_are_not_retried_and_map_to_their_exception(
    fake, code: grpc.StatusCode, error_type: type[GatewayError]
) -> None:
    servicer, address = fake
    servicer.failures = [(code, "model 'nope' is not known to the gateway")]
    async with AsyncGatewayClient(address, timeout=5.0, retry=FAST_RETRY) as client:
        with pytest.raises(error_type) as info:
            await client.invoke("nope", {"INPUT0": X})

    assert type(info.value) is error_type
    assert info.value.code is code and not info.value.retryable
    assert str(info.value) == f"{code.name}: model 'nope' is not known to the gateway"
    assert len(servicer.requests) == 1


async def test_deadline_exceeded_is_raised_and_not_retried(fake) -> None:
    servicer, address = fake
    servicer.hang = True
    async with AsyncGatewayClient(address, timeout=0.3, retry=FAST_RETRY) as client:
        with pytest.raises(DeadlineExceededError) as info:
            await client.invoke("add_one", {"INPUT0": X})

    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(servicer.requests) == 1


async def test_list_models_maps_the_response(fake) -> None:
    _, address = fake
    async with AsyncGatewayClient(address) as client:
        (model,) = await client.list_models(group="vision")

    assert (model.name, model.backend, model.group, model.ready_instances) == (
        "add_one",
        "triton",
        "vision",
        2,
    )
    assert [(v.version, v.labels, v.weight) for v in model.versions] == [
        ("1", ("stable",), 80),
        ("2", ("canary",), 20),
    ]


async def test_blocking_client_invokes_retries_and_lists(fake) -> None:
    servicer, address = fake
    servicer.failures = [(grpc.StatusCode.UNAVAILABLE, "connection refused")]

    def work() -> tuple[np.ndarray, list[str]]:
        with GatewayClient(address, timeout=5.0, retry=FAST_RETRY) as client:
            result = client.invoke("add_one", {"INPUT0": np.array([1, 2, 3], np.int64)})
            return result.outputs["OUTPUT0"], [m.name for m in client.list_models()]

    out, names = await asyncio.to_thread(work)

    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [2, 3, 4])
    assert names == ["add_one"]
    assert len(servicer.requests) == 2


async def test_blocking_client_without_retry_raises_on_first_unavailable(fake) -> None:
    servicer, address = fake
    servicer.failures = [(grpc.StatusCode.UNAVAILABLE, "connection refused")]

    def work() -> None:
        with GatewayClient(address, timeout=5.0, retry=NO_RETRY) as client:
            client.invoke("add_one", {"INPUT0": X})

    with pytest.raises(UnavailableError) as info:
        await asyncio.to_thread(work)
    assert info.value.attempts == 1 and len(servicer.requests) == 1


async def test_non_json_answer_is_reported_with_a_pointer_to_invoke_raw(fake) -> None:
    servicer, address = fake
    servicer.raw_answer = b"\x89PNG"
    async with AsyncGatewayClient(address) as client:
        with pytest.raises(GatewayError, match="invoke_raw"):
            await client.invoke("img", {"INPUT0": X})
        response = await client.invoke_raw("img", b"{}", "application/json")
    assert response.payload == b"\x89PNG"


def test_constructor_and_policy_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        GatewayClient()
    with pytest.raises(ValueError, match="timeout"):
        GatewayClient("127.0.0.1:1", timeout=0)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.3, multiplier=2.0, jitter=0.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]
