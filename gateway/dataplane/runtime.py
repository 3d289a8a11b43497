"""A small client of HAProxy's Runtime API (the admin stats socket), on asyncio.

One connection per batch, in prompt mode: every response ends with a ``"\\n> "`` prompt, so a
batch of N commands is read back as N responses without blocking the serving loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from registry.errors import ModelgateError

_PROMPT = b"\n> "


class RuntimeApiError(ModelgateError):
    """The Runtime API socket could not be reached or closed mid-batch."""


class RuntimeApi:
    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def execute(self, commands: Sequence[str]) -> list[str]:
        """Run ``commands`` in order; returns each command's output (stripped)."""
        if not commands:
            return []
        for command in commands:
            if "\n" in command or ";" in command:
                raise ValueError(f"one Runtime API command per entry: {command!r}")
        try:
            return await asyncio.wait_for(self._execute(commands), self.timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as err:
            raise RuntimeApiError(f"HAProxy Runtime API {self.socket_path}: {err!r}") from err

    async def _execute(self, commands: Sequence[str]) -> list[str]:
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path), limit=1 << 24)
        try:
            writer.write(b"prompt\n" + "".join(f"{c}\n" for c in commands).encode())
            await writer.drain()
            await reader.readuntil(_PROMPT)  # the prompt after "prompt" itself
            outputs = []
            for _ in commands:
                raw = await reader.readuntil(_PROMPT)
                outputs.append(raw[: -len(_PROMPT)].decode(errors="replace").strip())
            writer.write(b"quit\n")
            await writer.drain()
            return outputs
        finally:
            writer.close()
            await writer.wait_closed()
