"""The Python floor: a minimal grpc.aio proxy forwarding every unary call's bytes to one
backend (no parsing, no routing). ``python -m bench.floor <backend> [port]``."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc


class Forward(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method  # type: ignore[attr-defined]
        handler = self.handlers.get(method)
        if handler is None:
            call = self.channel.unary_unary(method)

            async def forward(request: bytes, context: Any) -> bytes:
                return await call(request, timeout=context.time_remaining())

            handler = self.handlers[method] = grpc.unary_unary_rpc_method_handler(forward)
        return handler


async def serve(backend: str, port: int) -> None:
    limits = [
        ("grpc.max_receive_message_length", 1 << 26),
        ("grpc.max_send_message_length", 1 << 26),
    ]
    channel = grpc.aio.insecure_channel(backend, options=limits)
    server = grpc.aio.server(options=limits)
    server.add_generic_rpc_handlers((Forward(channel),))
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"FLOOR LISTENING {port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0))
