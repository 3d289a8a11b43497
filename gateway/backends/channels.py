"""One reused grpc.aio channel per backend address; raw-bytes unary calls on it."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from gateway.errors import BackendStatusError, ConnectionFailure, DeadlineExceededError

log = logging.getLogger("gateway.backends")

Metadata = Sequence[tuple[str, str | bytes]]


def classify(err: grpc.aio.AioRpcError, address: str) -> Exception:
    """A backend's gRPC error as the router sees it (only UNAVAILABLE is retried)."""
    code = err.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return ConnectionFailure(address, err.details() or "UNAVAILABLE")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(f"backend {address} did not answer within the deadline")
    return BackendStatusError(code, err.details() or code.name, address)


class ChannelPool:
    """Channels keyed by address, and their raw unary callables keyed by (address, method)."""

    def __init__(self, max_message_bytes: int) -> None:
        self.options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # NOTE: fail fast on a dead backend instead of waiting for the reconnect backoff
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.enable_retries", 0),
            # NOTE: a backend's long error message (Triton echoes input names) must reach the
            # gateway, which bounds it for the caller (errors.status_of); gRPC's default
            # metadata limit would turn it into RESOURCE_EXHAUSTED instead.
            ("grpc.max_metadata_size", 1024 * 1024),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(
                address, options=self.options
            )
        return channel

    def unary(self, address: str, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        key = (address, method)
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = self.channel(address).unary_unary(method)
        return call

    async def call(
        self,
        address: str,
        method: str,
        payload: bytes,
        budget: float,
        metadata: Metadata | None = None,
    ) -> bytes:
        """Send ``payload`` as is; return the response bytes as is, or raise classified."""
        try:
            response: bytes = await self.unary(address, method)(
                payload, timeout=budget, metadata=metadata
            )
            return response
        except grpc.aio.AioRpcError as err:
            raise classify(err, address) from None

    async def forget(self, keep: set[str]) -> None:
        """Close channels to addresses no longer in the routing table."""
        for address in [a for a in self._channels if a not in keep]:
            channel = self._channels.pop(address)
            for key in [k for k in self._calls if k[0] == address]:
                del self._calls[key]
            await channel.close(grace=5.0)

    async def close(self) -> None:
        await self.forget(set())
