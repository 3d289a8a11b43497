"""The worker agent: registration, heartbeat, assignment watch, supervision and drain.

Wires :class:`~worker_agent.reconciler.Reconciler` (what to load and route),
:class:`~worker_agent.supervisor.Supervisor` (the launched model server),
:class:`~registry.status_server.StatusServer` and the ZooKeeper side: the ephemeral worker
node, updated at every heartbeat and whenever a model's health changes. At each heartbeat
it measures the launched server's process tree (:mod:`worker_agent.usage`) and, with a
memory capacity, guards it: a server over its capacity is killed and restarted, and the
copy loaded last is recorded out of memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from registry import EphemeralNode, Registry, TreeEvent, layout
from registry.errors import InvalidArgumentError, ZooKeeperUnavailableError
from registry.records import Assignment, OutOfMemory, Worker, WorkerSpec, steady
from registry.status_server import StatusServer
from worker_agent.artifacts import ArtifactStore
from worker_agent.backends import BackendController
from worker_agent.backends.tfserving import TFServingController
from worker_agent.backends.triton import TritonController
from worker_agent.metrics import WorkerMetrics
from worker_agent.reconciler import Reconciler
from worker_agent.settings import WorkerSettings
from worker_agent.supervisor import CommandLauncher, Launcher, Supervisor, TritonLauncher
from worker_agent.usage import Measurement, UsageMeter

log = logging.getLogger("worker_agent.agent")
zlog = logging.getLogger("worker_agent.zk")


class WorkerAgent:
    """One agent beside one model server. ``await start()``, then ``await drain()``."""

    def __init__(
        self, settings: WorkerSettings, *, metrics_registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.metrics_registry = metrics_registry or CollectorRegistry()
        self.metrics = WorkerMetrics(self.metrics_registry)
        self.model_root = Path(settings.model_root).resolve()
        self.workdir = Path(settings.work_dir or self.model_root.parent / ".worker").resolve()
        self.store = ArtifactStore(
            self.model_root,
            max_bytes=settings.max_artifact_bytes,
            manager_url=settings.manager_url,
            blob_token=settings.blob_token,
            http_timeout=settings.http_timeout_s,
            on_bytes=lambda scheme, n: self.metrics.pull_bytes.labels(scheme=scheme).inc(n),
        )
        self.launcher: Launcher | None = None
        self.supervisor: Supervisor | None = None
        self.backend: BackendController | None = None
        self.registry: Registry | None = None
        self.reconciler: Reconciler | None = None
        self.status: StatusServer | None = None
        self.worker_id: str | None = None
        self.spec = WorkerSpec()
        self.draining = False
        self.backend_live = False
        self.capacity_cpu = settings.capacity_cpu or float(len(os.sched_getaffinity(0)))
        self.meter = UsageMeter()
        #: The last measurement of the launched server (None: not measured, or not launched).
        self.measured: Measurement | None = None
        #: The memory guard killed the server (its out-of-memory record is written already).
        self._killed_for_memory = False
        self._node: EphemeralNode | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._publish = asyncio.Event()
        #: The record last written (None: the next one is written whole).
        self._written: Worker | None = None
        self._resync = asyncio.Event()
        self._watch: Any = None

    # -- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self.model_root.mkdir(parents=True, exist_ok=True)
        workdir = self.workdir
        if s.launch_triton:
            self.launcher = TritonLauncher(
                self.model_root, workdir, host=s.launch_host, grpc_port=s.triton_grpc_port
            )
        elif s.launch:
            assert s.backend_address is not None
            self.launcher = CommandLauncher(s.launch, s.backend_address, workdir)
        if self.launcher is not None:
            self.supervisor = Supervisor(
                self.launcher,
                self.metrics,
                backoff_min=s.restart_backoff_min_s,
                backoff_max=s.restart_backoff_max_s,
                on_restart=self._backend_restarted,
                on_exit=self._server_exited,
            )
            await self.supervisor.start()
        address = self._backend_address()
        if s.backend == "triton":
            self.backend = TritonController(address, self.model_root)
        else:
            self.backend = TFServingController(
                address, self.model_root, server_model_root=s.server_model_root
            )
        if isinstance(self.launcher, CommandLauncher):
            await self._wait_backend_live()
        else:
            self.backend_live = await self.backend.live()
            self.metrics.backend_live.set(1 if self.backend_live else 0)

        self.worker_id = s.worker_id or f"{s.advertise_host}:{address.rsplit(':', 1)[1]}"
        layout.check_node_id("worker", self.worker_id)
        self.status = StatusServer(
            s.status_host, s.status_port, self.metrics_registry, self.healthz
        )
        await self.status.start()

        self.registry = Registry(
            s.zk,
            s.root,
            connect_timeout=s.zk_connect_timeout_s,
            session_timeout=s.zk_session_timeout_s,
            operation_timeout=s.zk_operation_timeout_s,
        )
        await asyncio.to_thread(self.registry.start)
        self.registry.add_state_listener(self._on_zk_state, loop)
        self.metrics.zk_connected.set(1)
        self.reconciler = Reconciler(
            self.registry,
            self.worker_id,
            self.backend,
            self.store,
            self.metrics,
            route_address=self._route_address,
            load_timeout=s.load_timeout_s,
            unload_timeout=s.unload_timeout_s,
            drain_seconds=s.drain_s,
            on_change=self._publish.set,
        )
        await self.reconciler.start()
        self._node = await asyncio.to_thread(
            self.registry.register_ephemeral, layout.worker(self.worker_id), self._record()
        )
        zlog.info("registered worker %s (backend %s at %s)", self.worker_id, s.backend, address)
        await self._read_assignments()
        self._watch = await asyncio.to_thread(
            self.registry.watch_tree, layout.assignments(self.worker_id), self._on_tree, loop
        )
        for coro in (self._heartbeat(), self._publisher(), self._assignment_reader()):
            self._tasks.append(loop.create_task(coro))

    def _backend_address(self) -> str:
        if self.launcher is not None and self.settings.launch_triton:
            return self.launcher.address
        assert self.settings.backend_address is not None
        return self.settings.backend_address

    def _route_address(self) -> str:
        if self.settings.route_address:
            return self.settings.route_address
        address = self._backend_address()
        if self.settings.launch_triton:
            return f"{self.settings.advertise_host}:{address.rsplit(':', 1)[1]}"
        return address

    async def _wait_backend_live(self, wait_s: float = 60.0) -> None:
        assert self.backend is not None
        deadline = time.monotonic() + wait_s
        while not await self.backend.live():
            if time.monotonic() > deadline:
                log.warning("backend %s not live yet; carrying on", self.backend.address)
                return
            await asyncio.sleep(0.2)
        self.backend_live = True
        self.metrics.backend_live.set(1)

    # -- ZooKeeper -------------------------------------------------------------------------

    def _state(self) -> str:
        if self.draining or self.spec.draining:
            return "draining"
        if self.spec.cordoned:
            return "cordoned"
        return "ready"

    def _record(self) -> Worker:
        assert self.worker_id is not None and self.reconciler is not None
        status_port = self.status.port if self.status else None
        return Worker(
            worker_id=self.worker_id,
            host=self.settings.advertise_host,
            backend=self.settings.backend,
            address=self._route_address(),
            status_address=f"{self.settings.advertise_host}:{status_port}",
            labels=self.settings.labels,
            capacity_memory_mb=self.settings.capacity_memory_mb,
            capacity_cpu=self.capacity_cpu,
            state=self._state(),  # type: ignore[arg-type]
            heartbeat=time.time(),
            backend_live=self.backend_live,
            restarts=self.supervisor.restarts if self.supervisor else 0,
            models=self.reconciler.health(),
            usage=self.measured.server if self.measured else None,
            model_usage=self.measured.models if self.measured else {},
            ooms=self.reconciler.ooms(),
        )

    def _worth_writing(self, record: Worker) -> str:
        """Why ``record`` is written (``change``, ``usage``, ``refresh``), or ``skipped``: the
        node changes only when what its readers use changed, or to refresh the heartbeat
        time, so a steady worker costs ZooKeeper and every watcher nothing."""
        last = self._written
        if last is None:
            return "change"
        measured = {"heartbeat", "usage", "model_usage"}
        if record.model_dump(exclude=measured) != last.model_dump(exclude=measured):
            return "change"
        if not _usage_steady(record, last):
            return "usage"
        if record.heartbeat - last.heartbeat >= self.settings.heartbeat_refresh_s:
            return "refresh"
        return "skipped"

    def _on_zk_state(self, state: str) -> None:
        self.metrics.zk_connected.set(1 if state == "connected" else 0)
        if state == "connected":
            self._written = None  # NOTE: the node may be new (session expiry): write it whole
            self._resync.set()  # assignments may have changed while we were away
            self._publish.set()

    def _on_tree(self, event: TreeEvent) -> None:
        if event.kind not in ("suspended", "lost"):
            self._resync.set()

    async def _assignment_reader(self) -> None:
        while True:
            await self._resync.wait()
            self._resync.clear()
            try:
                await self._read_assignments()
            except ZooKeeperUnavailableError as err:
                zlog.warning("could not read assignments (keeping the last ones): %s", err)
                await asyncio.sleep(1.0)
                self._resync.set()

    async def _read_assignments(self) -> None:
        assert self.registry is not None and self.worker_id is not None
        assert self.reconciler is not None
        registry, path = self.registry, layout.assignments(self.worker_id)

        def read() -> tuple[WorkerSpec, dict[str, Assignment]]:
            spec = registry.read(path, WorkerSpec) or WorkerSpec()
            found: dict[str, Assignment] = {}
            for name in registry.children(path):
                try:
                    model, version = layout.parse_assignment_key(name)
                    record = registry.read(f"{path}/{name}", Assignment)
                except InvalidArgumentError as err:
                    zlog.error("ignoring assignment %s/%s: %s", path, name, err)
                    continue
                if record is None:
                    continue
                if (record.model, record.version) != (model, version):
                    zlog.error(
                        "ignoring assignment %s/%s: it names %s@%d",
                        path,
                        name,
                        record.model,
                        record.version,
                    )
                    continue
                found[name] = record
            return spec, found

        spec, desired = await asyncio.to_thread(read)
        if spec != self.spec:
            zlog.info("admin state: cordoned=%s draining=%s", spec.cordoned, spec.draining)
            self.spec = spec
            self._publish.set()
        self.reconciler.set_routes_enabled(not (spec.draining or self.draining))
        if not self.draining:
            self.reconciler.set_desired(desired)

    async def _publisher(self) -> None:
        """The only writer of the worker node: coalesces changes, counts failed writes."""
        assert self._node is not None
        node = self._node
        while True:
            await self._publish.wait()
            self._publish.clear()
            record = self._record()
            reason = self._worth_writing(record)
            self.metrics.record_writes.labels(reason).inc()
            if reason == "skipped":
                continue
            try:
                await asyncio.to_thread(node.update, record)
                self._written = record
            except ZooKeeperUnavailableError as err:
                self.metrics.heartbeat_failures.inc()
                zlog.warning("heartbeat not written (next one catches up): %s", err)
            except Exception:  # a bug must not end the heartbeat
                self.metrics.heartbeat_failures.inc()
                zlog.exception("heartbeat not written")

    async def _heartbeat(self) -> None:
        assert self.backend is not None and self.reconciler is not None
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            live = await self.backend.live()
            if live != self.backend_live:
                # NOTE: a server that came back may have lost its models: the probe below
                # withdraws their routes and reloads whatever is not ready.
                log.warning("backend %s is %s", self.backend.address, "live" if live else "DOWN")
            self.backend_live = live
            self.metrics.backend_live.set(1 if live else 0)
            try:
                await self.reconciler.probe(live)
            except Exception:
                log.exception("health probe failed")
            try:
                await self._measure()
            except Exception:
                log.exception("measuring the model server failed")
            self.metrics.heartbeats.inc()
            self._publish.set()

    async def _measure(self) -> None:
        """Measure the launched server's process tree; guard its memory; let out-of-memory
        copies back in once memory allows."""
        assert self.reconciler is not None
        launcher, supervisor = self.launcher, self.supervisor
        if launcher is None or supervisor is None or supervisor.state != "serving":
            return
        pid = launcher.pid
        if pid is None:
            return
        started = time.perf_counter()
        measured = await asyncio.to_thread(self.meter.measure, pid)
        self.metrics.measure_seconds.observe(time.perf_counter() - started)
        if measured is None:  # it ended meanwhile: the supervisor takes over
            return
        self.measured = measured
        self.metrics.set_usage(measured)
        capacity = self.settings.capacity_memory_mb
        if capacity is None:
            return
        memory = measured.server.memory_mb
        if self.settings.memory_guard and memory > capacity:
            record = OutOfMemory(memory_mb=memory, capacity_mb=capacity)
            if self.reconciler.out_of_memory(record, measured.models) is None:
                # NOTE: killing a server that holds no copy would only start it over.
                log.warning(
                    "the model server alone uses %g MiB, over --capacity-memory-mb %d",
                    memory,
                    capacity,
                )
                return
            log.error(
                "the model server uses %g MiB, over --capacity-memory-mb %d: killing it "
                "(out of memory)",
                memory,
                capacity,
            )
            self.metrics.out_of_memory.labels(cause="guard").inc()
            self._killed_for_memory = True
            self.measured = None
            await asyncio.to_thread(launcher.kill)
            return
        self.reconciler.release_out_of_memory(capacity - memory, self.settings.oom_retry_margin_mb)

    def _server_exited(self, returncode: int | None) -> None:
        """The launched server ended. Killed by SIGKILL from outside while its last measured
        memory was near the capacity (the kernel's OOM killer, a cgroup limit): out of memory."""
        assert self.reconciler is not None
        measured, self.measured = self.measured, None
        if self._killed_for_memory:  # recorded when the guard killed it
            self._killed_for_memory = False
            return
        capacity = self.settings.capacity_memory_mb
        if (
            returncode != -signal.SIGKILL
            or capacity is None
            or measured is None
            or measured.server.memory_mb < capacity * self.settings.oom_sigkill_ratio
        ):
            return
        log.error(
            "the model server was killed by SIGKILL at %g MiB of --capacity-memory-mb %d "
            "(out of memory)",
            measured.server.memory_mb,
            capacity,
        )
        self.metrics.out_of_memory.labels(cause="sigkill").inc()
        self.reconciler.out_of_memory(
            OutOfMemory(memory_mb=measured.server.memory_mb, capacity_mb=capacity),
            measured.models,
        )

    async def _backend_restarted(self) -> None:
        assert self.backend is not None and self.reconciler is not None
        self.backend.set_address(self._backend_address())
        self.backend_live = await self.backend.live()
        self.reconciler.backend_restarted()
        self._publish.set()

    # -- status ----------------------------------------------------------------------------

    def healthz(self) -> tuple[bool, dict[str, Any]]:
        details: dict[str, Any] = {
            "worker_id": self.worker_id,
            "state": self._state(),
            "backend": self.settings.backend,
            "backend_live": self.backend_live,
            "zk_connected": bool(self.registry and self.registry.connected),
            "restarts": self.supervisor.restarts if self.supervisor else 0,
            "models": {
                k: h.model_dump()
                for k, h in (self.reconciler.health() if self.reconciler else {}).items()
            },
            "routes": self.reconciler.routes() if self.reconciler else [],
        }
        return self.backend_live and not self.draining, details

    # -- stop ------------------------------------------------------------------------------

    async def drain(self) -> None:
        """SIGTERM: state draining, delete routes, wait drain-s, unload, deregister."""
        assert self.reconciler is not None
        log.info("draining")
        self.draining = True
        await self._write_now()
        await self.reconciler.drain()
        await self._write_now()
        await self._shutdown(deregister=True)
        log.info("drained; bye")

    async def _write_now(self) -> None:
        if self._node is None:
            return
        try:
            await asyncio.to_thread(self._node.update, self._record())
        except ZooKeeperUnavailableError as err:
            zlog.warning("could not write the worker record: %s", err)

    async def abandon(self) -> None:
        """Stop without unloading or deregistering (as a crash would); models stay loaded."""
        if self.reconciler is not None:
            await self.reconciler.abandon()
        await self._shutdown(deregister=False, stop_server=False)

    async def _shutdown(self, *, deregister: bool, stop_server: bool = True) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._watch is not None:
            self._watch.close()
        if deregister and self._node is not None:
            try:
                await asyncio.to_thread(self._node.remove)
                zlog.info("deregistered worker %s", self.worker_id)
            except ZooKeeperUnavailableError as err:
                zlog.warning("could not deregister (the session's end removes it): %s", err)
        if self.registry is not None:
            await asyncio.to_thread(self.registry.stop)
        if self.backend is not None:
            await self.backend.close()
        if self.supervisor is not None and stop_server:
            await self.supervisor.stop()
        if self.status is not None:
            await self.status.stop()


def _usage_steady(new: Worker, old: Worker) -> bool:
    """The measured usage of ``new`` is within one step of ``old``'s: the server's CPU and
    memory against the worker's capacity, each model's against its own last figure."""
    if (new.usage is None) != (
        old.usage is None
    ) or new.model_usage.keys() != old.model_usage.keys():
        return False
    if new.usage is not None and old.usage is not None:
        if not steady(new.usage.cpu, old.usage.cpu, new.capacity_cpu):
            return False
        if not steady(new.usage.memory_mb, old.usage.memory_mb, new.capacity_memory_mb):
            return False
    return all(
        steady(use.memory_mb, old.model_usage[key].memory_mb, None)
        and steady(use.cpu, old.model_usage[key].cpu, new.capacity_cpu)
        for key, use in new.model_usage.items()
    )
