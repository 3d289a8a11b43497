"""The gateway process: gRPC server with every surface, ZooKeeper feed, health, metrics."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2  # noqa: F401

from gateway.backends import tfserving, triton
from gateway.backends.kinds import Backends
from gateway.backends.rest import ServiceProber
from gateway.cache import ResponseCache
from gateway.coldstart import ColdStarts
from gateway.dataplane.config import Layout
from gateway.dataplane.controller import DataPlane
from gateway.limits import ModelLimits
from gateway.looplag import LoopLagProbe
from gateway.metrics import GatewayMetrics
from gateway.plugins import PluginHost
from gateway.router import Router
from gateway.settings import GatewaySettings
from gateway.shadow import ShadowTraffic
from gateway.surfaces import invoke
from gateway.surfaces.base import Core
from gateway.surfaces.kserve import KServeSurface
from gateway.surfaces.tfserving import TFServingSurface
from gateway.table import SLICE, RoutingTable, TableChange, with_service_health
from gateway.watcher import TableWatcher
from gateway.workers import Reporter, WorkerPaths, WorkerPool, merge_plugins

# NOTE: imported for their descriptors, so that reflection can describe these services.
from protos.tfs.tensorflow_serving.apis import prediction_service_pb2  # noqa: F401
from registry import EphemeralNode, Registry, layout
from registry.errors import ModelgateError
from registry.records import Gateway as GatewayRecord
from registry.records import GatewayPluginStatus, Record
from registry.status_server import StatusServer
from registry.version import version

log = logging.getLogger("gateway.app")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GatewayApp:
    """One gateway. ``await start()``, then ``await stop()`` (graceful).

    With ``worker`` it is one of the gateway's Python workers (gateway/workers.py): it
    serves the Python path on the worker's Unix socket and reports to the control process,
    which alone runs HAProxy, the status port and the ``/gateways/<id>`` record.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        metrics_registry: CollectorRegistry | None = None,
        registry: Registry | None = None,
        worker: WorkerPaths | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = GatewayMetrics(metrics_registry or CollectorRegistry())
        self.registry = registry
        self._own_registry = registry is None
        self.router = Router(
            self.metrics,
            max_attempts=settings.max_attempts,
            eject_after=settings.eject_after,
            eject_seconds=settings.eject_s,
        )
        self.backends = Backends(settings.max_message_bytes)
        self.cache = ResponseCache(
            self.metrics,
            settings.cache_redis_url,
            redis_password=settings.cache_redis_password,
            redis_timeout_s=settings.cache_redis_timeout_s,
        )
        self.shadow = ShadowTraffic(
            self.router, self.backends, self.metrics, settings.shadow_max_in_flight
        )
        self.prober = ServiceProber(self.backends.rest.client, self._on_probe)
        # NOTE: HAProxy spreads calls over the Python processes: each enforces its share
        self.limits = ModelLimits(
            self.metrics, settings.python_workers if settings.dataplane == "haproxy" else 1
        )
        self.cold_starts: ColdStarts | None = None
        #: The routing table as ZooKeeper has it (the router's adds what the probes say).
        self.configured = RoutingTable()
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.watcher: TableWatcher | None = None
        self.worker = worker
        #: HAProxy in front (``--dataplane haproxy``); None when Python serves the port alone.
        self.dataplane = (
            DataPlane(
                self.metrics,
                binary=settings.haproxy_bin,
                max_message_bytes=settings.max_message_bytes,
                grace_s=settings.grace_s,
                tls=(settings.tls_cert, settings.tls_key)
                if settings.tls_cert and settings.tls_key
                else None,
                client_ca=settings.tls_client_ca,
                on_backend_down=self.router.eject,
                layout=Layout(settings.haproxy_dir, settings.haproxy_instances)
                if settings.haproxy_dir
                else None,
                slots=settings.haproxy_instances,
            )
            if settings.dataplane == "haproxy" and worker is None
            else None
        )
        #: More Python processes behind HAProxy (``--python-workers``), started and
        #: restarted by this one.
        self.workers = (
            WorkerPool(
                settings,
                self.metrics,
                on_up=lambda index: self._spawn(self._rotate(index, up=True)),
                on_down=lambda index: self._spawn(self._rotate(index, up=False)),
                on_plugins=lambda: self._update_record(plugins=self._plugin_status()),
            )
            if self.dataplane is not None and settings.python_workers > 1
            else None
        )
        #: What the status port's /metrics shows: this process's metrics and its workers'.
        self.exposed = (
            self.metrics.registry
            if self.workers is None
            else self.workers.exposed(self.metrics.registry)
        )
        self.http = StatusServer(settings.host, settings.metrics_port, self.exposed, self._healthz)
        #: A worker's line to the control process, once it serves.
        self._reporter: Reporter | None = None
        self._plugins_changed = asyncio.Event()
        self.plugins: PluginHost | None = None
        self.node: EphemeralNode | None = None
        self.port = 0
        self.metrics_port = 0
        self._model_health: set[str] = set()
        self._stopping = False
        self._tasks: set[asyncio.Future[None]] = set()
        self._health_lock = asyncio.Lock()
        #: What changed since the model health services were last set.
        self._health_changes = TableChange()
        self._node_lock = asyncio.Lock()
        #: The gateway record as it should be in ZooKeeper (written by :meth:`_update_node`).
        self._wanted: Record | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.loop_lag = LoopLagProbe(self.metrics).start()
        if self.registry is None:
            self.registry = Registry(s.zk, s.root, connect_timeout=s.zk_connect_timeout_s)
            await asyncio.to_thread(self.registry.start)
        if self.workers is not None:
            await self.workers.start()  # NOTE: they boot while this process builds its table
        self.plugins = PluginHost(
            self.registry,
            self.metrics,
            cache_dir=s.plugin_dir,
            blob_token=s.blob_token,
            threads=s.plugin_threads,
            processes=s.plugin_processes,
            on_change=self._on_plugins,
        )
        self.cold_starts = ColdStarts(
            self.registry, self._gateway_id, s.cold_start_queue, s.instance_grace_s
        )
        core = Core(
            self.router,
            self.backends,
            self.metrics,
            self.plugins,
            self.cache,
            self.shadow,
            self.limits,
            self.cold_starts,
            default_timeout=s.default_timeout_s,
            version=version(),
        )
        self.watcher = TableWatcher(self.registry, self.metrics, self._on_table)
        await self.watcher.start()
        # NOTE: the first table (tens of thousands of records at fleet size), the imports and
        # the clients live as long as the process: out of the cyclic GC's reach, a full
        # collection no longer walks them (~0.1-0.2 s per walk at 10,000 models, a stall of
        # every call on the loop). Garbage first, so that none is kept for ever; the gateway
        # does not serve yet
        gc.collect()
        gc.freeze()

        limits = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
        ]
        self.server = grpc.aio.server(options=limits)
        self.server.add_generic_rpc_handlers(
            (
                TFServingSurface(core).handler(),
                KServeSurface(core).handler(),
                invoke.GatewaySurface(core).handler(),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                tfserving.SERVICE,
                triton.SERVICE,
                invoke.SERVICE,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        address = f"{s.host}:{s.port}"
        if self.worker is not None:
            await self._settle_plugins()
            self.port = self.server.add_insecure_port(f"unix:{self.worker.socket}")
        elif self.dataplane is not None:
            # NOTE: HAProxy takes the public port (and TLS); Python serves it on loopback
            address = f"127.0.0.1:{s.internal_port}"
            self.port = self.server.add_insecure_port(address)
        elif s.tls_cert and s.tls_key:
            creds = await asyncio.to_thread(_credentials, s)
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        await self.server.start()
        if self.worker is not None:
            await self.health.set("", SERVING)
            self._reporter = Reporter(self.worker)
            self._reporter.send(self.plugins.status())
            log.info("Python worker %d serving on %s", self.worker.index, self.worker.socket)
            return
        if self.dataplane is not None:
            workers = () if self.workers is None else self.workers.sockets
            self.port = await self.dataplane.start(s.host, s.port, self.port, workers)
        self.metrics_port = await self.http.start()
        if self.workers is not None:
            await self.workers.wait_serving()
        await self.health.set("", SERVING)
        record = GatewayRecord(
            gateway_id=s.node_id(self.port),
            address=s.address(self.port),
            metrics_address=f"{s.address(self.port).rpartition(':')[0]}:{self.metrics_port}",
            version=version(),
            plugins=self._plugin_status(),
            services=self.prober.health(self.configured.services),
        )
        self.node = await asyncio.to_thread(
            self.registry.register_ephemeral, layout.gateway(record.gateway_id), record
        )
        # NOTE: what changed while the node was being created
        self._update_record(
            plugins=self._plugin_status(), services=self.prober.health(self.configured.services)
        )
        log.info(
            "gateway %s serving on %s (metrics on %d), %d models routable",
            record.gateway_id,
            self.port,
            self.metrics_port,
            len(self.router.table.models),
        )

    async def stop(self) -> None:
        """Health NOT_SERVING -> stop accepting -> finish in-flight -> deregister."""
        if self._stopping:
            return
        self._stopping = True
        await self.health.enter_graceful_shutdown()
        if self.dataplane is not None:
            await self.dataplane.stop()
        if self.workers is not None:
            await self.workers.stop(self.settings.grace_s)
        if self.server is not None:
            await self.server.stop(self.settings.grace_s)
        if self.node is not None:
            try:
                await asyncio.to_thread(self.node.remove)
            except Exception:
                log.warning("could not deregister %s", self.node.path, exc_info=True)
        if self.watcher is not None:
            self.watcher.close()
        if self.cold_starts is not None:
            await self.cold_starts.close()
        await self.http.stop()
        if self.plugins is not None:
            await self.plugins.close()
        await self.prober.close()
        await self.shadow.stop()
        await self.cache.close()
        await self.backends.close()
        if self._reporter is not None:
            self._reporter.close()
        if self._own_registry and self.registry is not None:
            await asyncio.to_thread(self.registry.stop)
        log.info("gateway stopped")

    async def wait(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()

    # -- table and health ---------------------------------------------------------------

    def _on_table(self, table: RoutingTable, change: TableChange) -> None:
        # NOTE: a table keeps the services mapping of the previous one when none changed
        services_changed = table.services is not self.configured.services
        self.configured = table
        if services_changed:
            self.prober.sync(table.services)
        self.cache.sync(table.models, change.models)
        if self.dataplane is not None:
            self.dataplane.on_table(table, change)
        self._publish_table(change)
        if self.plugins is not None:
            self.plugins.sync(table.models, change.models)
        if services_changed:
            self._update_record(services=self.prober.health(table.services))

    def _on_probe(self) -> None:
        """A REST service URL went down or came back: route, report health and record it."""
        self._publish_table(TableChange(frozenset(self.configured.services)))
        self._update_record(services=self.prober.health(self.configured.services))

    def _publish_table(self, change: TableChange) -> None:
        table = with_service_health(self.configured, self.prober.down)
        self.limits.sync(table.models, change.models)  # NOTE: before calls see the table
        self.router.set_table(table, change)
        if self.cold_starts is not None:
            self.cold_starts.on_table(change.models)
        for name in change.models:
            entry = table.models.get(name)
            self.metrics.routes.labels(name).set(entry.ready_instances if entry else 0)
        self._health_changes = self._health_changes.then(change)
        self._spawn(self._apply_health())

    async def _apply_health(self) -> None:
        # NOTE: the latest table under a lock: an older task never overwrites a newer state
        async with self._health_lock:
            if self._stopping:
                return
            table, change = self.router.table, self._health_changes
            self._health_changes = TableChange()
            for n, name in enumerate(change.models, 1):
                if n % SLICE == 0:
                    await asyncio.sleep(0)  # NOTE: a burst of changes: let calls run
                entry = table.models.get(name)
                ready = entry is not None and entry.ready_instances > 0
                if entry is not None or name in self._model_health:
                    await self.health.set(f"model/{name}", SERVING if ready else NOT_SERVING)
                if entry is not None:
                    self._model_health.add(name)
            if change.removed:
                await self.backends.pool.forget(set(table.addresses))

    def _on_plugins(self, status: dict[str, GatewayPluginStatus]) -> None:
        """Publish plugin status (serving version, load errors) in /gateways/<id> (a worker:
        tell the control process, which publishes it)."""
        self._plugins_changed.set()
        if self._reporter is not None:
            if not self._stopping:
                self._reporter.send(status)
        elif self.worker is None:
            self._update_record(plugins=self._plugin_status())

    def _plugin_status(self) -> dict[str, GatewayPluginStatus]:
        """The plugins of this process and of every worker that serves."""
        assert self.plugins is not None
        workers = [] if self.workers is None else self.workers.plugin_views()
        return merge_plugins([self.plugins.status(), *workers])

    async def _settle_plugins(self) -> None:
        """(A worker, before it serves.) Until the plugins of the first table are loaded or
        have failed: HAProxy sends it no call that would find its plugin still loading."""
        assert self.plugins is not None
        while not all(p.serving or p.error for p in self.plugins.status().values()):
            self._plugins_changed.clear()
            await self._plugins_changed.wait()

    async def _rotate(self, worker: int, *, up: bool) -> None:
        assert self.dataplane is not None
        await self.dataplane.rotate_worker(worker, up=up)

    def _update_record(self, **update: Any) -> None:
        """Change fields of this gateway's record in /gateways/<id> (no-op before start)."""
        if self.node is None or self._stopping:
            return
        record = self._wanted or self.node.record
        if all(getattr(record, k) == v for k, v in update.items()):
            return
        self._wanted = record.model_copy(update=update)
        self._spawn(self._update_node())

    async def _update_node(self) -> None:
        assert self.node is not None and self._wanted is not None
        # NOTE: writes in order, each the latest wanted record: concurrent updates lose nothing
        async with self._node_lock:
            try:
                await asyncio.to_thread(self.node.update, self._wanted)
            except ModelgateError as err:  # kept; written when the node is re-created
                log.warning("could not publish the gateway record: %s", err)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _gateway_id(self) -> str:
        """This gateway's id (a Python worker's: the one in its settings)."""
        s = self.settings
        return s.node_id(s.port if self.worker is not None else self.port)

    def _healthz(self) -> tuple[bool, dict[str, Any]]:
        zk = "connected" if self.registry is not None and self.registry.connected else "unreachable"
        details: dict[str, Any] = {
            "gateway_id": self.settings.node_id(self.port),
            "status": "ok",
            "models": len(self.router.table.models),
            "zookeeper": zk,
        }
        if self.workers is not None:
            details["python_workers"] = self.workers.serving + 1
        if self._stopping:
            details["status"] = "stopping"
        elif self.router.table.generation == 0:
            details["status"] = "no routing table yet"
        elif self.dataplane is not None and not self.dataplane.serving:
            details["status"] = "haproxy not running"
        elif self.workers is not None and self.workers.serving < len(self.workers.workers):
            details["status"] = "a python worker is not serving"
        return details["status"] == "ok", details


def _credentials(s: GatewaySettings) -> grpc.ServerCredentials:
    assert s.tls_cert and s.tls_key
    ca = Path(s.tls_client_ca).read_bytes() if s.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )
