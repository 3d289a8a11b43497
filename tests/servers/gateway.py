"""``python -m gateway`` as a subprocess on free ports (a live gateway, as clients see it)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from deploy.local.runner import Process


class GatewayProcess(Process):
    """A gateway on 127.0.0.1 with free ports, its log in ``<workdir>/gateway.log``.

    ``args`` are more gateway flags (``--zk``, ``--root``, ...); :meth:`serve` starts it and
    returns once it has written its ready file.
    """

    def __init__(self, workdir: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", "0",
               "--metrics-port", "0", *args]  # fmt: skip
        super().__init__("gateway", cmd, log=workdir / "gateway.log", env=env)

    def serve(self, timeout: float = 60.0) -> GatewayProcess:
        self.start()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def address(self) -> str:
        """Its gRPC "127.0.0.1:port"."""
        return f"127.0.0.1:{self.port('grpc')}"
