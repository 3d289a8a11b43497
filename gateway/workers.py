"""Python gateway workers: more processes serving the Python path behind HAProxy.

With ``--dataplane haproxy`` and ``--python-workers N`` (N > 1) the gateway process (the
control process: HAProxy's control plane, the ``/gateways/<id>`` record, the status port)
serves the Python path itself and starts N - 1 workers beside it. HAProxy's ``python``
backend balances each call (each HTTP/2 stream) over the N of them.

- Each worker is a :class:`~registry.processes.ServerProcess` running
  ``python -m gateway.python_worker <directory> <index>``: its own process group, SIGKILLed
  if the control process dies. It is a :class:`~gateway.app.GatewayApp` with its own ZooKeeper
  watch (so any one process can die without the others losing their table), serving on the
  Unix socket ``<directory>/python-<index>.sock``, bound once its first table is built and
  the plugins of it are loaded (or failed).
- A worker reports to the control process (a :class:`WorkerReport` datagram on
  ``<directory>/control.sock``) when it serves and whenever its plugins change.
- The control process restarts a worker that exits (``modelgate_gateway_worker_restarts``),
  takes it out of HAProxy's rotation at once (Runtime API; a health check too) and back
  when the new one serves.
- Workers count their calls in prometheus_client's multiprocess files
  (``<directory>/metrics``); the status port adds them to the control process's own
  metrics (:class:`MergedCollector`), so counters sum over every process that ever ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.samples import Sample
from pydantic import BaseModel, ValidationError

from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from registry.errors import ModelgateError
from registry.processes import ServerProcess
from registry.records import GatewayPluginStatus

log = logging.getLogger("gateway.workers")

#: Restart delay after a worker exited before serving, doubled per such exit, capped.
_BACKOFF_S = (0.1, 5.0)
#: Seconds between two progress lines while the workers start (each reads the routing table).
_PROGRESS_S = 10.0
#: Exits before serving, in a row, after which a worker is taken to be unable to start.
_FAILED_STARTS = 3


class WorkerError(ModelgateError):
    """A Python worker could not be started."""


@dataclass(frozen=True)
class WorkerPaths:
    """Where one worker serves and reports (shared by the control process and the worker)."""

    directory: Path
    index: int

    @property
    def socket(self) -> Path:
        return self.directory / f"python-{self.index}.sock"

    @property
    def control(self) -> Path:
        return self.directory / "control.sock"


class WorkerReport(BaseModel):
    """A worker's word to the control process: it serves, and its plugins as it sees them."""

    index: int
    pid: int
    plugins: dict[str, GatewayPluginStatus]


class Reporter:
    """The worker's side of the control socket."""

    def __init__(self, paths: WorkerPaths) -> None:
        self.paths = paths
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.settimeout(1.0)

    def send(self, plugins: Mapping[str, GatewayPluginStatus]) -> None:
        report = WorkerReport(index=self.paths.index, pid=os.getpid(), plugins=dict(plugins))
        try:
            self._socket.sendto(report.model_dump_json().encode(), str(self.paths.control))
        except OSError as err:  # NOTE: the control process is stopping (or gone: so are we)
            log.warning("could not report to the control process: %s", err)

    def close(self) -> None:
        self._socket.close()


def merge_plugins(
    views: Sequence[Mapping[str, GatewayPluginStatus]],
) -> dict[str, GatewayPluginStatus]:
    """One gateway's plugin status over its processes: a load error any of them has, and the
    version serving when every process that serves one serves the same (a process still
    loading its first version serves none; none while they differ: a swap half done, or a
    version that failed to load in some of them)."""
    merged: dict[str, GatewayPluginStatus] = {}
    for model in sorted({m for view in views for m in view}):
        seen = [view[model] for view in views if model in view]
        errors = [s.error for s in seen if s.error]
        serving = {s.serving for s in seen if s.serving}
        merged[model] = GatewayPluginStatus(
            serving=serving.pop() if len(serving) == 1 else None,
            error=errors[0] if errors else None,
        )
    return merged


class MergedCollector:
    """The control process's metrics with the workers' added (one ``/metrics`` for all).

    Counters and histograms are summed per label set. Gauges in prometheus_client's
    ``livesum`` mode (calls in flight) are summed over live workers; gauges in its default
    mode come labelled by ``pid``: they describe one process (the routing table it holds, its
    ZooKeeper session) and the control process's own value stands for the gateway.
    """

    def __init__(self, own: CollectorRegistry, directory: Path) -> None:
        self.own = own
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        families = {family.name: family for family in self.own.collect()}
        # NOTE: the directory exists from the pool's start to its stop
        workers = (
            MultiProcessCollector(None, str(self.directory)) if self.directory.is_dir() else None
        )
        for family in workers.collect() if workers is not None else ():
            mine = families.get(family.name)
            if mine is None:
                mine = Metric(family.name, family.documentation, family.type)
                families[family.name] = mine
            index = {_key(s): i for i, s in enumerate(mine.samples)}
            for sample in family.samples:
                if "pid" in sample.labels:
                    continue
                key = _key(sample)
                at = index.get(key)
                if at is None:
                    index[key] = len(mine.samples)
                    mine.samples.append(sample)
                else:
                    mine.samples[at] = mine.samples[at]._replace(
                        value=mine.samples[at].value + sample.value
                    )
        yield from families.values()


def _key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample.name, tuple(sorted(sample.labels.items()))


class State(enum.Enum):
    LATENT = "latent"
    RUNNING = "running"
    STOPPING = "stopping"
    CLOSED = "closed"


class _Worker:
    """One worker slot: the process running in it now and whether it serves."""

    def __init__(self, paths: WorkerPaths) -> None:
        self.paths = paths
        self.process: ServerProcess | None = None
        self.plugins: dict[str, GatewayPluginStatus] | None = None
        """What it reported; None until the process running now serves."""
        self.serving = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        #: Exits before serving since it last served (a crash loop when it keeps growing).
        self.failed_starts = 0
        self.last_exit_code: int | None = None


class WorkerPool:
    """The control process's side: starts, watches and restarts the workers."""

    def __init__(
        self,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        *,
        on_up: Callable[[int], None],
        on_down: Callable[[int], None],
        on_plugins: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        #: A worker (by index) serves: put it in HAProxy's rotation.
        self.on_up = on_up
        #: A worker exited: take it out of rotation.
        self.on_down = on_down
        #: A worker's plugin status changed (see :meth:`plugin_views`).
        self.on_plugins = on_plugins
        # NOTE: created by start(), removed by stop(): a gateway that never starts leaves nothing
        self.directory = Path(tempfile.gettempdir()) / f"modelgate-workers-{uuid.uuid4().hex[:12]}"
        self.metrics_dir = self.directory / "metrics"
        self.workers = [
            _Worker(WorkerPaths(self.directory, index))
            for index in range(1, settings.python_workers)
        ]
        self.state = State.LATENT
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def sockets(self) -> list[Path]:
        """The Unix socket of each worker (HAProxy's ``python`` backend servers)."""
        return [w.paths.socket for w in self.workers]

    @property
    def serving(self) -> int:
        return sum(w.serving.is_set() for w in self.workers)

    def plugin_views(self) -> list[dict[str, GatewayPluginStatus]]:
        """The plugin status of each worker that serves."""
        return [w.plugins for w in self.workers if w.plugins is not None]

    def exposed(self, own: CollectorRegistry) -> CollectorRegistry:
        """A registry of ``own``'s metrics and the workers' (for the status port)."""
        merged = CollectorRegistry()
        merged.register(MergedCollector(own, self.metrics_dir))
        return merged

    async def start(self) -> None:
        """Start every worker (see :meth:`wait_serving`)."""
        if self.state is not State.LATENT:
            raise RuntimeError(f"worker pool is {self.state.value}")
        self.metrics_dir.mkdir(mode=0o700, parents=True)
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Reports(self._on_report),
            local_addr=str(self.workers[0].paths.control),
            family=socket.AF_UNIX,
        )
        self.state = State.RUNNING
        for worker in self.workers:
            worker.task = asyncio.create_task(
                self._supervise(worker), name=f"python-worker-{worker.paths.index}"
            )

    async def wait_serving(self) -> None:
        """Until every worker serves (start-up), however long reading a large fleet's routing
        table takes them, saying how far they are every few seconds. Raises WorkerError when
        a worker exited :data:`_FAILED_STARTS` times in a row before serving."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        waits = [asyncio.create_task(w.serving.wait()) for w in self.workers]
        try:
            while True:
                _, pending = await asyncio.wait(waits, timeout=_PROGRESS_S)
                if not pending:
                    return
                for worker in self.workers:
                    if worker.failed_starts >= _FAILED_STARTS:
                        raise WorkerError(
                            f"Python worker {worker.paths.index} exited {worker.failed_starts} "
                            f"times before serving (last exit code {worker.last_exit_code}); "
                            "its messages are in the gateway's log"
                        )
                log.info(
                    "%d of %d Python workers serve after %.0f s (each reads the routing table)",
                    len(waits) - len(pending), len(waits), loop.time() - started,
                )  # fmt: skip
        finally:
            for task in waits:
                task.cancel()

    async def _supervise(self, worker: _Worker) -> None:
        delay = _BACKOFF_S[0]
        while self.state is State.RUNNING:
            process = ServerProcess(
                [sys.executable, "-m", "gateway.python_worker", str(self.directory),
                 str(worker.paths.index)],
                owner=f"{self.directory.name}-{worker.paths.index}",
                log_path=_log_path(worker.paths),
                env=self._environment(),
            )  # fmt: skip
            # NOTE: a pool thread lives as long as the loop (the parent-death signal's owner)
            await asyncio.to_thread(process.start)
            worker.process = process
            assert process.proc is not None
            if self.state is not State.RUNNING:  # NOTE: stop() came while it was starting
                await asyncio.to_thread(process.stop, self.settings.grace_s)
                return
            await _exited(process.proc.pid)
            served = worker.serving.is_set()
            worker.serving.clear()
            worker.plugins = None
            if self.state is not State.RUNNING:
                return  # NOTE: stop() reaps it
            await asyncio.to_thread(process.stop, 0)  # NOTE: reaps it, and what it left
            code = process.proc.returncode
            worker.failed_starts = 0 if served else worker.failed_starts + 1
            worker.last_exit_code = code
            mark_process_dead(process.proc.pid, str(self.metrics_dir))
            self.on_down(worker.paths.index)
            self.on_plugins()
            self.metrics.worker_restarts.inc()
            delay = _BACKOFF_S[0] if served else min(delay * 2, _BACKOFF_S[1])
            log.warning(
                "Python worker %d (pid %d) exited with code %s; restarting in %.1fs",
                worker.paths.index, process.proc.pid, code, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)

    def _environment(self) -> dict[str, str]:
        """The control process's settings as the worker's environment (secrets included:
        never on a command line) and prometheus_client's multiprocess directory."""
        prefix = str(GatewaySettings.model_config.get("env_prefix", ""))
        env = dict(os.environ)
        for name, value in self.settings.model_dump(mode="json", exclude_none=True).items():
            env[f"{prefix}{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        return env

    def _on_report(self, report: WorkerReport) -> None:
        if not 1 <= report.index <= len(self.workers):
            return
        worker = self.workers[report.index - 1]
        process = worker.process
        if process is None or process.pid != report.pid or self.state is not State.RUNNING:
            return  # NOTE: a report of a process that has exited since
        worker.plugins = report.plugins
        if not worker.serving.is_set():
            worker.serving.set()
            log.info("Python worker %d (pid %d) serving", report.index, report.pid)
            self.on_up(report.index)
        self.on_plugins()

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker (each finishes its calls in flight), SIGKILL after ``grace``."""
        if self.state in (State.STOPPING, State.CLOSED):
            return
        self.state = State.STOPPING
        running = [w.process for w in self.workers if w.process is not None]
        await asyncio.gather(*(asyncio.to_thread(p.stop, grace) for p in running))
        for worker in self.workers:
            if worker.task is not None:
                await worker.task
        if self._transport is not None:
            self._transport.close()
        await asyncio.to_thread(shutil.rmtree, self.directory, True)
        self.state = State.CLOSED


class _Reports(asyncio.DatagramProtocol):
    def __init__(self, on_report: Callable[[WorkerReport], None]) -> None:
        self.on_report = on_report

    def datagram_received(self, data: bytes, addr: object) -> None:
        try:
            report = WorkerReport.model_validate_json(data)
        except ValidationError as err:
            log.warning("ignoring a malformed worker report: %s", err)
            return
        self.on_report(report)


async def _exited(pid: int) -> None:
    """Until process ``pid`` (our child, not yet reaped) has exited."""
    loop = asyncio.get_running_loop()
    fd = os.pidfd_open(pid)
    exited: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _log_path(paths: WorkerPaths) -> Path:
    """Where a worker's output goes: the control process's standard error (one log for the
    gateway), unless that is a socket (journald), which cannot be opened by path."""
    with contextlib.suppress(OSError):
        if not stat.S_ISSOCK(os.fstat(sys.stderr.fileno()).st_mode):
            return Path(f"/proc/self/fd/{sys.stderr.fileno()}")
    return paths.directory / f"python-{paths.index}.log"
