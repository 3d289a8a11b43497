"""The Python floor: a minimal grpc.aio proxy forwarding every unary call's bytes to one
backend (no parsing, no routing).
``python -m bench.floor <backend> --ready-file PATH`` (a free port, written to the file)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import grpc

from registry import readyfile


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


async def serve(backend: str, ready_file: Path) -> None:
    limits = [
        ("grpc.max_receive_message_length", 1 << 26),
        ("grpc.max_send_message_length", 1 << 26),
    ]
    channel = grpc.aio.insecure_channel(backend, options=limits)
    server = grpc.aio.server(options=limits)
    server.add_generic_rpc_handlers((Forward(channel),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    readyfile.write(ready_file, {"grpc": port})
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("backend", help="host:port of the backend")
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.backend, args.ready_file))
