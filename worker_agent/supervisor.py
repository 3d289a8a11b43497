"""Start the model server beside the agent and restart it with backoff when it dies."""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal, Protocol

from registry.processes import ServerProcess
from worker_agent.metrics import WorkerMetrics
from worker_agent.tritonserver import TritonServer

log = logging.getLogger("worker_agent.supervisor")

#: A restart that stays up this long resets the backoff.
_STABLE_SECONDS = 60.0


class Launcher(Protocol):
    """A model-server process the agent owns."""

    @property
    def address(self) -> str: ...

    @property
    def running(self) -> bool: ...

    @property
    def pid(self) -> int | None:
        """The server process (the root of its process tree), once started."""

    @property
    def returncode(self) -> int | None:
        """How the server ended (negative: the signal that killed it); None while it runs."""

    def start(self) -> None:
        """Start the process and return once it serves (blocking)."""

    def stop(self) -> None:
        """Stop the process (blocking)."""

    def kill(self) -> None:
        """SIGKILL the server, as the kernel's OOM killer does (blocking); the supervisor
        restarts it."""


class TritonLauncher:
    """tritonserver from the nvidia-pytriton wheel on the agent's model root.

    A restart reuses the port of the first start, so routes keep their address.
    """

    def __init__(self, model_root: Path, workdir: Path, *, host: str, grpc_port: int) -> None:
        self.model_root = model_root
        self.workdir = workdir
        self.host = host
        self.port = grpc_port
        self.server: TritonServer | None = None

    @property
    def address(self) -> str:
        port = (self.server.port if self.server else None) or self.port
        return f"{self.host}:{port}"

    @property
    def running(self) -> bool:
        return self.server is not None and self.server.running

    @property
    def pid(self) -> int | None:
        return self.server.pid if self.server else None

    @property
    def returncode(self) -> int | None:
        return self.server.returncode if self.server else None

    def start(self) -> None:
        self.server = TritonServer(
            self.model_root, self.workdir, grpc_port=self.port, host=self.host
        )
        self.server.start()
        self.port = self.server.port or self.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def kill(self) -> None:
        if self.server is not None:
            self.server.kill()


class CommandLauncher:
    """Any model-server command line (e.g. tensorflow_model_server ...) at a known address."""

    def __init__(self, command: str, address: str, workdir: Path) -> None:
        self._address = address
        self.process = ServerProcess(
            shlex.split(command),
            owner=str(workdir.resolve()),
            log_path=workdir / "model-server.log",
        )

    @property
    def address(self) -> str:
        return self._address

    @property
    def running(self) -> bool:
        return self.process.running

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.proc.poll() if self.process.proc else None

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()


class Supervisor:
    """Watches a :class:`Launcher`; restarts it with exponential backoff and reports back."""

    def __init__(
        self,
        launcher: Launcher,
        metrics: WorkerMetrics,
        *,
        backoff_min: float,
        backoff_max: float,
        on_restart: Callable[[], Awaitable[None]],
        on_exit: Callable[[int | None], None] = lambda returncode: None,
        poll_interval: float = 0.2,
    ) -> None:
        self.launcher = launcher
        self.metrics = metrics
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.on_restart = on_restart
        self.on_exit = on_exit
        self.poll_interval = poll_interval
        self.restarts = 0
        #: ``serving`` while the server runs and the agent knows it (``on_restart`` done);
        #: ``restarting`` from its exit until then (a measurement of it means nothing yet).
        self.state: Literal["starting", "serving", "restarting", "stopped"] = "starting"
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.launcher.start)
        self.state = "serving"
        log.info("model server started at %s", self.launcher.address)
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="supervisor")

    async def _watch(self) -> None:
        delay = self.backoff_min
        up_since = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(self.poll_interval)
            if self.launcher.running or self._stopping:
                if time.monotonic() - up_since > _STABLE_SECONDS:
                    delay = self.backoff_min
                continue
            self.state = "restarting"
            returncode = self.launcher.returncode
            log.warning("model server exited (%s); restarting in %.1fs", returncode, delay)
            self.on_exit(returncode)
            await asyncio.sleep(delay)
            delay = min(self.backoff_max, delay * 2)
            if self._stopping:
                return
            self.restarts += 1
            self.metrics.backend_restarts.inc()
            try:
                await asyncio.to_thread(self.launcher.start)
            except Exception as err:
                log.error("model server restart failed: %s", err)
                continue
            up_since = time.monotonic()
            log.info(
                "model server restarted at %s (restart %d)", self.launcher.address, self.restarts
            )
            await self.on_restart()
            self.state = "serving"

    async def stop(self) -> None:
        self._stopping = True
        self.state = "stopped"
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.to_thread(self.launcher.stop)
