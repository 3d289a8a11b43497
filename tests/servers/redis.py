"""A real redis-server (Debian's ``redis-server``) for the tests, on a Unix socket of its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import redis

from registry.processes import ServerProcess
from tests.servers.zk import wait_for


class LocalRedis:
    """``redis-server`` without TCP or persistence, listening on ``<workdir>/redis.sock``."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is missing: install it with `make setup` or "
                "`sudo apt-get install -y redis-server` (the response cache tests use a real one)"
            )
        self.socket = workdir / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.process = ServerProcess(
            [binary, "--port", "0", "--unixsocket", str(self.socket), "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            owner=f"redis-{workdir}",
            log_path=workdir / "redis.log",
        )  # fmt: skip

    def start(self) -> None:
        self.process.start()
        wait_for(self._answers, what="redis-server to answer PING")

    def stop(self) -> None:
        self.process.stop()
        self.socket.unlink(missing_ok=True)

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket))

    def _answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False
