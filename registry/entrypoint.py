"""What every role's ``python -m <role>`` does the same way: settings from flags over the
environment (invalid ones exit 2 saying why), logging configured once, SIGTERM/SIGINT as
an asyncio event, and an error that ends start-up (ZooKeeper unreachable, ...) logged as
one line with exit code 1."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from registry import logs
from registry.errors import ModelgateError
from registry.settings_cli import parse_settings


class RoleSettings(Protocol):
    log_level: str
    log_json: bool


S = TypeVar("S", bound=BaseSettings)


def settings_or_exit(cls: type[S], argv: Sequence[str] | None, *, prog: str, description: str) -> S:
    """The role's settings, with its logging configured; exit 2 if they are invalid."""
    try:
        settings = parse_settings(cls, argv, prog=prog, description=description)
    except ValidationError as err:
        print(f"invalid settings:\n{err}", file=sys.stderr)
        raise SystemExit(2) from None
    role: RoleSettings = settings  # type: ignore[assignment]
    logs.configure(role.log_level, role.log_json)
    return settings


def stop_event() -> asyncio.Event:
    """An event the running loop sets on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run(main: Coroutine[Any, Any, None], log: logging.Logger) -> int:
    """Run the role's main coroutine; 0, or 1 after logging the error that ended it."""
    try:
        asyncio.run(main)
    except ModelgateError as err:  # e.g. ZooKeeper unreachable at start-up
        log.error("%s", err)
        return 1
    return 0
