"""Run ``python -m gateway`` as a subprocess (a live gateway, as clients see it)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


class GatewayProcess:
    """A gateway on a free port; ``address`` is its gRPC "127.0.0.1:port"."""

    def __init__(self, zk: str, root: str, *extra: str, start_timeout: float = 60.0) -> None:
        self.log: deque[str] = deque(maxlen=200)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "--zk",
                zk,
                "--root",
                root,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--gateway-id",
                "e2e-clients",
                *extra,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.port = self._wait_listening(start_timeout)
        self.address = f"127.0.0.1:{self.port}"
        # Keep draining the output so the gateway never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_listening(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                self.log.append(line.rstrip())
                if line.startswith("GATEWAY LISTENING "):
                    return int(line.split()[2])
        finally:
            timer.cancel()
        raise RuntimeError("gateway did not start:\n" + self.log_tail())

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip())

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(list(self.log)[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
