"""Typed clients for ``modelgate.v1.Gateway``: :class:`GatewayClient` (blocking) and
:class:`AsyncGatewayClient` (asyncio).

Both give every call a deadline (``timeout`` per call, else the client's default), retry
UNAVAILABLE with exponential backoff within that same deadline (never other codes: an
INVALID_ARGUMENT stays one), and raise :mod:`modelgate_client.errors` exceptions that carry
the gRPC code. One client holds one channel; share it, and close it when done.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt

from modelgate_client.errors import DeadlineExceededError, GatewayError, from_rpc_error
from modelgate_client.tensors import JSON_CONTENT_TYPE, decode_outputs, encode_inputs
from protos.modelgate.v1 import gateway_pb2, gateway_pb2_grpc

T = TypeVar("T")

#: The gateway's default message limit (``--max-message-bytes``), used for the channel too.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
Metadata = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of UNAVAILABLE: ``max_attempts`` tries in all, backoff growing by
    ``multiplier`` from ``initial_backoff`` up to ``max_backoff`` seconds, +/- ``jitter``."""

    max_attempts: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("RetryPolicy backoffs must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("RetryPolicy.jitter must be in [0, 1)")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return base * (1 + random.uniform(-self.jitter, self.jitter))


#: A policy that never retries.
NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class InvokeResult:
    """The decoded answer of :meth:`GatewayClient.invoke`."""

    model: str
    #: The version that served the call.
    version: str
    outputs: dict[str, np.ndarray]
    request_id: str


@dataclass(frozen=True)
class VersionInfo:
    version: str
    labels: tuple[str, ...]
    #: Share of unpinned traffic (0-100).
    weight: int
    ready_instances: int


@dataclass(frozen=True)
class ModelInfo:
    """A routable model as the gateway sees it (from ``ListModels``)."""

    name: str
    backend: str
    versions: tuple[VersionInfo, ...]
    ready_instances: int
    plugin: str
    group: str
    state: str

    @classmethod
    def from_proto(cls, m: gateway_pb2.ModelInfo) -> ModelInfo:
        return cls(
            name=m.name,
            backend=m.backend,
            versions=tuple(
                VersionInfo(v.version, tuple(v.labels), v.weight, v.ready_instances)
                for v in m.versions
            ),
            ready_instances=m.ready_instances,
            plugin=m.plugin,
            group=m.group,
            state=m.state,
        )


def _invoke_request(
    model: str,
    payload: bytes,
    content_type: str,
    version: int | str | None,
    label: str | None,
    parameters: Mapping[str, str] | None,
    request_id: str | None,
) -> gateway_pb2.InvokeRequest:
    if not model:
        raise ValueError("model must not be empty")
    return gateway_pb2.InvokeRequest(
        model=model,
        version="" if version is None else str(version),
        version_label=label or "",
        payload=payload,
        content_type=content_type,
        parameters=dict(parameters or {}),
        # NOTE: one id for every attempt, so retries of one call can be traced together.
        request_id=request_id or uuid.uuid4().hex,
    )


def _decode(response: gateway_pb2.InvokeResponse) -> InvokeResult:
    try:
        outputs = decode_outputs(response.payload)
    except ValueError as err:
        raise GatewayError(
            f"model {response.model!r} answered with a payload that is not JSON tensors "
            f"(content type {response.content_type!r}): {err}; use invoke_raw"
        ) from None
    return InvokeResult(response.model, response.version, outputs, response.request_id)


def _channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class _Base:
    def __init__(self, timeout: float, retry: RetryPolicy, metadata: Metadata) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        self.timeout = timeout
        self.retry = retry
        self.metadata = tuple(metadata)

    def _budget(self, timeout: float | None) -> float:
        budget = self.timeout if timeout is None else timeout
        if budget <= 0:
            raise ValueError("timeout must be > 0 seconds")
        return budget

    def _next_delay(self, error: GatewayError, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before the next attempt, or None to give up with ``error``."""
        if not error.retryable or attempt >= self.retry.max_attempts:
            return None
        delay = self.retry.backoff(attempt)
        if time.monotonic() + delay >= deadline:
            return None
        return delay


def _expired(what: str, budget: float, attempts: int) -> DeadlineExceededError:
    return DeadlineExceededError(
        f"{what}: deadline of {budget:g}s expired after {attempts} attempt(s)", attempts=attempts
    )


class GatewayClient(_Base):
    """Blocking client of ``modelgate.v1.Gateway``.

    >>> with GatewayClient("gateway:8500", timeout=5) as client:
    ...     result = client.invoke("add_one", {"INPUT0": np.array([1, 2, 3], np.float32)})
    ...     result.outputs["OUTPUT0"]
    array([2., 3., 4.], dtype=float32)
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        metadata: Metadata = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(timeout, retry, metadata)
        if (address is None) == (channel is None):
            raise ValueError("pass exactly one of address and channel")
        self._owns_channel = channel is None
        if channel is None:
            assert address is not None
            options = _channel_options(max_message_bytes)
            channel = (
                grpc.secure_channel(address, credentials, options)
                if credentials is not None
                else grpc.insecure_channel(address, options)
            )
        self.channel = channel
        self._stub = gateway_pb2_grpc.GatewayStub(channel)

    def _call(self, what: str, fn: Callable[[float], T], timeout: float | None) -> T:
        budget = self._budget(timeout)
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _expired(what, budget, attempt - 1)
            try:
                return fn(remaining)
            except grpc.RpcError as err:
                error = from_rpc_error(err, attempt)
            delay = self._next_delay(error, attempt, deadline)
            if delay is None:
                raise error
            time.sleep(delay)

    def invoke_raw(
        self,
        model: str,
        payload: bytes,
        content_type: str,
        *,
        version: int | str | None = None,
        label: str | None = None,
        parameters: Mapping[str, str] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> gateway_pb2.InvokeResponse:
        """``Invoke`` with a raw payload (image bytes, a plugin's JSON, ...)."""
        request = _invoke_request(
            model, payload, content_type, version, label, parameters, request_id
        )
        return self._call(
            f"Invoke {model!r}",
            lambda t: self._stub.Invoke(request, timeout=t, metadata=self.metadata),
            timeout,
        )

    def invoke(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        version: int | str | None = None,
        label: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> InvokeResult:
        """``Invoke`` a model without a plugin with numpy tensors (the JSON tensor codec)."""
        response = self.invoke_raw(
            model,
            encode_inputs(inputs),
            JSON_CONTENT_TYPE,
            version=version,
            label=label,
            timeout=timeout,
            request_id=request_id,
        )
        return _decode(response)

    def list_models(self, group: str = "", *, timeout: float | None = None) -> list[ModelInfo]:
        """The models the gateway can route to (optionally of one business group)."""
        request = gateway_pb2.ListModelsRequest(group=group)
        response = self._call(
            "ListModels",
            lambda t: self._stub.ListModels(request, timeout=t, metadata=self.metadata),
            timeout,
        )
        return [ModelInfo.from_proto(m) for m in response.models]

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGatewayClient(_Base):
    """asyncio client of ``modelgate.v1.Gateway`` (same API as :class:`GatewayClient`,
    awaitable). Create it inside the event loop that uses it."""

    def __init__(
        self,
        address: str | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        metadata: Metadata = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(timeout, retry, metadata)
        if (address is None) == (channel is None):
            raise ValueError("pass exactly one of address and channel")
        self._owns_channel = channel is None
        if channel is None:
            assert address is not None
            options = _channel_options(max_message_bytes)
            channel = (
                grpc.aio.secure_channel(address, credentials, options)
                if credentials is not None
                else grpc.aio.insecure_channel(address, options)
            )
        self.channel = channel
        self._stub = gateway_pb2_grpc.GatewayStub(channel)

    # NOTE: ``timeout`` (ASYNC109) is the gRPC deadline sent to the gateway, which
    # propagates it to the backend; asyncio.timeout() would only cancel locally.
    async def _call(
        self,
        what: str,
        fn: Callable[[float], Awaitable[T]],
        timeout: float | None,  # noqa: ASYNC109
    ) -> T:
        budget = self._budget(timeout)
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _expired(what, budget, attempt - 1)
            try:
                return await fn(remaining)
            except grpc.RpcError as err:
                error = from_rpc_error(err, attempt)
            delay = self._next_delay(error, attempt, deadline)
            if delay is None:
                raise error
            await asyncio.sleep(delay)

    async def invoke_raw(
        self,
        model: str,
        payload: bytes,
        content_type: str,
        *,
        version: int | str | None = None,
        label: str | None = None,
        parameters: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        request_id: str | None = None,
    ) -> gateway_pb2.InvokeResponse:
        """``Invoke`` with a raw payload (image bytes, a plugin's JSON, ...)."""
        request = _invoke_request(
            model, payload, content_type, version, label, parameters, request_id
        )
        return await self._call(
            f"Invoke {model!r}",
            lambda t: self._stub.Invoke(request, timeout=t, metadata=self.metadata),
            timeout,
        )

    async def invoke(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        version: int | str | None = None,
        label: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        request_id: str | None = None,
    ) -> InvokeResult:
        """``Invoke`` a model without a plugin with numpy tensors (the JSON tensor codec)."""
        response = await self.invoke_raw(
            model,
            encode_inputs(inputs),
            JSON_CONTENT_TYPE,
            version=version,
            label=label,
            timeout=timeout,
            request_id=request_id,
        )
        return _decode(response)

    async def list_models(
        self,
        group: str = "",
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[ModelInfo]:
        """The models the gateway can route to (optionally of one business group)."""
        request = gateway_pb2.ListModelsRequest(group=group)
        response = await self._call(
            "ListModels",
            lambda t: self._stub.ListModels(request, timeout=t, metadata=self.metadata),
            timeout,
        )
        return [ModelInfo.from_proto(m) for m in response.models]

    async def close(self) -> None:
        if self._owns_channel:
            await self.channel.close()

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
