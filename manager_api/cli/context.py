"""What every command shares: its error, the manager's REST API, the context it runs in and
the helper that binds a sub-command to its function."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from manager_api.cli.output import Output


class CliError(Exception):
    """Printed as ``error: <message>``; ``code`` is the exit status, ``status`` the HTTP
    status of the manager's answer when there was one."""

    def __init__(self, message: str, code: int = 1, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class Api:
    """A thin client of the manager's REST API that raises CliError with the server's detail."""

    def __init__(self, base_url: str, token: str | None, timeout: float) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise CliError(f"cannot reach the manager at {self.base_url}: {err}", 2) from None
        if response.status_code >= 400:
            try:
                body = response.json()
                message = f"{body.get('title', 'error')} ({response.status_code}): {body['detail']}"
            except (ValueError, KeyError, TypeError, AttributeError):
                message = f"HTTP {response.status_code}: {response.text[:500]}"
            raise CliError(message, status=response.status_code)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


@dataclass
class Cli:
    """What every command gets besides its arguments: the global options and the output."""

    manager: str
    token: str | None
    timeout: float
    out: Output

    @cached_property
    def api(self) -> Api:
        return Api(self.manager, self.token, self.timeout)

    def upload(self, path: str, name: str, file: BinaryIO, size: int, data: dict[str, Any]) -> Any:
        """POST ``file`` as the multipart field ``file`` to ``path``, with a progress bar."""
        with self.out.progress() as progress:
            reader = progress.wrap_file(file, total=size, description=name)
            return self.api.call("POST", path, files={"file": (name, reader)}, data=data)

    def upload_file(self, path: str, file: Path, data: dict[str, Any]) -> Any:
        with file.open("rb") as stream:
            return self.upload(path, file.name, stream, file.stat().st_size, data)


#: One command: its function takes the context and the parsed arguments.
Command = Callable[[Cli, argparse.Namespace], None]
# NOTE: argparse gives the sub-parsers action no public name.
SubParsers = argparse._SubParsersAction


class Commands:
    """Adds sub-commands that accept the global options, each bound to its function
    (``set_defaults(command=...)``)."""

    def __init__(self, subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
        self._subparsers = subparsers
        self._common = common

    def add(self, name: str, help_: str, command: Command) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._subparsers.add_parser(
            name, help=help_, parents=[self._common]
        )
        parser.set_defaults(command=command)
        return parser

    def area(self, name: str, help_: str) -> Commands:
        """A command with actions of its own (``modelgate models list``)."""
        parser = self._subparsers.add_parser(name, help=help_, parents=[self._common])
        actions = parser.add_subparsers(dest="cmd", required=True, metavar="ACTION")
        return Commands(actions, self._common)


def pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    """``key=value`` arguments as a dict; anything else is a usage error naming ``what``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{what} {item!r}: use key=value", 2)
        out[key] = value
    return out
