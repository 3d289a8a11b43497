"""HAProxy as a supervised child: ``haproxy -W -db -f cfg`` (master-worker, foreground) in a
process group of its own, restarted when it exits, soft-stopped (drained) on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from gateway.dataplane.runtime import RuntimeApi, RuntimeApiError
from registry.errors import ModelgateError
from registry.processes import die_with_parent

log = logging.getLogger("gateway.dataplane.haproxy")


#: Restart delay after a crash, doubled per consecutive failed start, capped.
_BACKOFF_S = (0.1, 5.0)


class DataPlaneError(ModelgateError):
    """HAProxy could not be started."""


class State(enum.Enum):
    LATENT = "latent"
    RUNNING = "running"
    STOPPING = "stopping"
    CLOSED = "closed"


class Supervisor:
    def __init__(
        self,
        binary: str,
        config: Path,
        api: RuntimeApi,
        *,
        pass_fds: Sequence[int],
        on_exit: Callable[[], None],
        on_restart: Callable[[], Awaitable[None]],
        ready_timeout: float = 10.0,
    ) -> None:
        self.binary = binary
        self.config = config
        self.api = api
        self.pass_fds = tuple(pass_fds)
        #: Called when HAProxy exited on its own (it is about to be restarted).
        self.on_exit = on_exit
        #: Called once a restarted HAProxy answers on its Runtime API.
        self.on_restart = on_restart
        self.ready_timeout = ready_timeout
        self.state = State.LATENT
        self.process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._output: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        """The master process id (its process group holds the workers)."""
        return None if self.process is None else self.process.pid

    async def start(self) -> None:
        if self.state is not State.LATENT:
            raise RuntimeError(f"supervisor is {self.state.value}")
        await self._spawn()
        self.state = State.RUNNING
        self._task = asyncio.create_task(self._supervise(), name="haproxy-supervisor")

    async def _spawn(self) -> None:
        self.process = process = await asyncio.create_subprocess_exec(
            # NOTE: SIGTERM when the gateway dies, even by SIGKILL: no orphan HAProxy keeps
            # the public port
            *die_with_parent("TERM"), self.binary, "-W", "-db", "-f", str(self.config),
            pass_fds=self.pass_fds,
            start_new_session=True,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdout is not None
        self._output = [t for t in self._output if not t.done()]
        self._output.append(asyncio.create_task(_relay(process.stdout)))
        deadline = asyncio.get_running_loop().time() + self.ready_timeout
        while True:
            if process.returncode is not None:
                raise DataPlaneError(
                    f"haproxy exited with code {process.returncode} at start "
                    f"(configuration {self.config}; its messages are in the gateway log)"
                )
            try:
                await self.api.execute(["show info"])
                break
            except RuntimeApiError:
                if asyncio.get_running_loop().time() > deadline:
                    self._kill_group(signal.SIGKILL)
                    raise DataPlaneError(
                        f"haproxy did not open its Runtime API within {self.ready_timeout}s"
                    ) from None
                await asyncio.sleep(0.05)
        log.info("haproxy running (master pid %d)", process.pid)

    async def _supervise(self) -> None:
        delay = _BACKOFF_S[0]
        while True:
            assert self.process is not None
            code = await self.process.wait()
            if self.state is not State.RUNNING:
                return
            self._kill_group(signal.SIGKILL)  # NOTE: workers the master left behind
            self.on_exit()
            log.warning("haproxy exited with code %s; restarting in %.1fs", code, delay)
            await asyncio.sleep(delay)
            if self.state is not State.RUNNING:
                return
            try:
                await self._spawn()
            except (DataPlaneError, OSError) as err:
                log.error("could not restart haproxy: %s", err)
                delay = min(delay * 2, _BACKOFF_S[1])
                continue
            delay = _BACKOFF_S[0]
            await self.on_restart()

    async def stop(self, grace: float) -> None:
        """Soft stop (stop listening, finish calls in flight) for up to ``grace`` seconds."""
        if self.state in (State.STOPPING, State.CLOSED):
            return
        self.state = State.STOPPING
        process = self.process
        if process is not None and process.returncode is None:
            # NOTE: to the master alone, which soft-stops its workers: a worker that gets a
            # second SIGUSR1 while stopping dies of it (its calls in flight with it)
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGUSR1)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                log.warning("haproxy still draining after %.1fs: stopping it", grace)
                self._kill_group(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 2.0)
                except TimeoutError:
                    self._kill_group(signal.SIGKILL)
                    await process.wait()
        self._kill_group(signal.SIGKILL)
        if self._task is not None:
            await self._task
        for task in self._output:
            task.cancel()
        self.state = State.CLOSED

    def _kill_group(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


async def _relay(stream: asyncio.StreamReader) -> None:
    """HAProxy's own messages (alerts, warnings) into the gateway's log."""
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        level = logging.WARNING if "[ALERT]" in text else logging.DEBUG
        log.log(level, "%s", text)
