"""The gateway as HAProxy's control plane: writes its base configuration, supervises it,
turns each routing table into Runtime API commands, and counts the fast-path calls from its
access log (a ring buffer followed over the Runtime API, read in batches) in the gateway's
own metrics."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from gateway.dataplane.config import (
    LOG_RING,
    LOG_TAG,
    LUA,
    PYTHON_BACKEND,
    Layout,
    Listener,
    render,
    worker_server,
)
from gateway.dataplane.plan import SURFACES, Address, Programmer, fast_routes, parse_key
from gateway.dataplane.runtime import RuntimeApi, RuntimeApiError
from gateway.dataplane.supervisor import DataPlaneError, State, Supervisor
from gateway.metrics import GatewayMetrics
from gateway.table import SLICE, RoutingTable, TableChange

log = logging.getLogger("gateway.dataplane")

#: gRPC code of an HTTP status HAProxy answered or relayed without a grpc-status header
#: (gRPC's own HTTP-to-gRPC mapping).
_HTTP_CODES = {
    "200": "OK", "400": "INTERNAL", "401": "UNAUTHENTICATED", "403": "PERMISSION_DENIED",
    "404": "UNIMPLEMENTED", "429": "UNAVAILABLE", "502": "UNAVAILABLE", "503": "UNAVAILABLE",
    "504": "UNAVAILABLE",
}  # fmt: skip
#: Longest wait for HAProxy's access log to catch up with its counters (see settle()).
_SETTLE_S = 10.0
_GRPC_CODES = {str(code.value[0]): code.name for code in grpc.StatusCode}


class DataPlane:
    """HAProxy on the public port in front of the Python gateway (on ``python_port``)."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        binary: str,
        max_message_bytes: int,
        grace_s: float,
        tls: tuple[str, str] | None = None,
        client_ca: str | None = None,
        layout: Layout | None = None,
        slots: int = Layout.slots,
        on_backend_down: Callable[[str], None] = lambda address: None,
    ) -> None:
        self.metrics = metrics
        self.binary = binary
        self.max_message_bytes = max_message_bytes
        self.grace_s = grace_s
        self.tls = tls
        self.client_ca = client_ca
        #: Told the "host:port" of an instance HAProxy found dead (the router ejects it too).
        self.on_backend_down = on_backend_down
        self._own_dir = layout is None
        # NOTE: created by start(), removed by stop(): a gateway that never starts leaves nothing
        private = Path(tempfile.gettempdir()) / f"modelgate-haproxy-{uuid.uuid4().hex[:12]}"
        self.layout = layout or Layout(private, slots)
        self.api = RuntimeApi(self.layout.admin_socket)
        self.programmer = Programmer(
            str(self.layout.route_map),
            self.layout.slots,
            concurrency_map=str(self.layout.concurrency_map),
            rate_map=str(self.layout.rate_map),
        )
        self.supervisor: Supervisor | None = None
        self.state = State.LATENT
        self._table = RoutingTable()
        #: What changed since the last apply.
        self._change = TableChange()
        self._dirty = asyncio.Event()
        self._reset = False
        #: The next apply programs every model (the first, and after HAProxy restarted).
        self._full = True
        self._addresses: dict[str, Address | None] = {}
        self._applier: asyncio.Task[None] | None = None
        self._log: asyncio.Task[None] | None = None
        #: The log ring was re-created (HAProxy started): read it from its beginning.
        self._fresh_ring = True
        self._public: socket.socket | None = None
        self._logged = 0
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self.applied = asyncio.Event()

    async def start(
        self, host: str, port: int, python_port: int, workers: Sequence[Path] = ()
    ) -> int:
        """Start HAProxy on ``host:port`` (0 picks a free port); returns the port. The
        Python path goes to ``127.0.0.1:python_port`` and the Unix sockets ``workers``.

        The gateway opens the listening socket and HAProxy inherits it, so calls wait in its
        backlog (instead of being refused) while a crashed HAProxy is restarted.
        """
        if self.state is not State.LATENT:
            raise RuntimeError(f"data plane is {self.state.value}")
        if shutil.which(self.binary) is None:
            raise DataPlaneError(
                f"haproxy binary {self.binary!r} not found: install it (Debian: apt-get install "
                "-y haproxy) or run the gateway with --dataplane python"
            )
        if not LUA.is_file():  # NOTE: package data; an install without it cannot route
            raise DataPlaneError(f"{LUA} is missing from the installed gateway package")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._public = public = socket.create_server((host, port), family=family, backlog=1024)
        public.set_inheritable(True)
        await asyncio.to_thread(self._write_files, public.fileno(), python_port, workers)
        self.supervisor = Supervisor(
            self.binary,
            self.layout.config,
            self.api,
            pass_fds=(public.fileno(),),
            on_exit=self._on_exit,
            on_restart=self._on_restart,
        )
        try:
            await self.supervisor.start()
        except DataPlaneError:
            public.close()
            await asyncio.to_thread(self._remove_files)
            raise
        self.state = State.RUNNING
        self._applier = asyncio.create_task(self._apply_loop(), name="haproxy-programmer")
        self._log = asyncio.create_task(self._follow_log(), name="haproxy-log")
        self._dirty.set()
        return int(public.getsockname()[1])

    def _write_files(self, fd: int, python_port: int, workers: Sequence[Path]) -> None:
        self.layout.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for map_file in (self.layout.route_map, self.layout.concurrency_map, self.layout.rate_map):
            map_file.write_text("")
        listener = Listener(fd)
        if self.tls is not None:
            cert, key = self.tls
            pem = self.layout.tls_pem
            pem.touch(mode=0o600)
            pem.write_bytes(Path(cert).read_bytes().rstrip(b"\n") + b"\n" + Path(key).read_bytes())
            listener = Listener(fd, pem, Path(self.client_ca) if self.client_ca else None)
        self.layout.config.write_text(
            render(
                self.layout,
                listener,
                python_port,
                workers,
                max_message_bytes=self.max_message_bytes,
            )
        )

    @property
    def serving(self) -> bool:
        """HAProxy runs (false while a crashed one is being restarted)."""
        process = None if self.supervisor is None else self.supervisor.process
        return self.state is State.RUNNING and process is not None and process.returncode is None

    async def rotate_worker(self, index: int, *, up: bool) -> None:
        """Put Python worker ``index`` in the python backend's rotation, or take it out."""
        server = f"{PYTHON_BACKEND}/{worker_server(index)}"
        command = f"set server {server} health {'up' if up else 'down'}"
        try:
            (output,) = await self.api.execute([command])
        except RuntimeApiError as err:  # NOTE: restarting; the new HAProxy's checks decide
            log.warning("could not tell haproxy %r: %s", command, err)
            return
        if output:
            log.warning("haproxy: %r -> %s", command, output)

    def on_table(self, table: RoutingTable, change: TableChange) -> None:
        """A new routing table (cheap: the commands are computed and sent by a task)."""
        self._table = table
        self._change = self._change.then(change)
        self.applied.clear()
        self._dirty.set()

    def _on_exit(self) -> None:
        self.metrics.dataplane_restarts.inc()
        self.applied.clear()
        self._reset = True  # NOTE: the next HAProxy starts from the base configuration
        self._logged = 0
        self._fresh_ring = True

    async def _on_restart(self) -> None:
        self._dirty.set()

    async def _apply_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self.state is not State.RUNNING:
                return
            if self._reset:
                self._reset = False
                self._full = True
                self.programmer.reset()
            table, change = self._table, self._change
            self._change = TableChange()
            # NOTE: after a (re)start HAProxy has its base configuration: program every model
            models = sorted(table.models if self._full else change.models)
            self._full = False
            await self._resolve(table, change, models)
            # NOTE: in slices of models (each one Runtime API batch) so a full resync never
            # holds the serving loop for long
            for start in range(0, len(models), SLICE):
                if not await self._program(table, models[start : start + SLICE]):
                    self._reset = True  # HAProxy went away; restarted, then a full resync
                    break
            if not self._dirty.is_set() and not self._reset:
                self.applied.set()

    async def _program(self, table: RoutingTable, models: list[str]) -> bool:
        """Send HAProxy the commands that bring ``models`` up to ``table``; False when it
        could not be reached."""
        routes = fast_routes(table, self._addresses.get, models)
        commands = self.programmer.plan(routes, models)
        try:
            outputs = await self.api.execute(commands)
        except RuntimeApiError as err:
            log.warning("could not program haproxy: %s", err)
            return False
        for command, output in zip(commands, outputs, strict=True):
            if output and " addr " not in command:
                log.warning("haproxy: %r -> %s", command, output)
        if commands:
            log.info("haproxy programmed: %d commands for %d models, %d fast-path routes",
                     len(commands), len(models), len(routes))  # fmt: skip
        return True

    async def _resolve(self, table: RoutingTable, change: TableChange, models: list[str]) -> None:
        """Resolve the new instance host names of ``models`` once each (HAProxy's ``set
        server addr`` takes IPs); forget the addresses no model routes to any more."""
        for address in change.removed:
            self._addresses.pop(address, None)
        entries = (table.models.get(name) for name in models)
        live = {i.address for m in entries if m is not None for v in m.versions.values()
                for i in v.instances if i.protocol != "rest"}  # fmt: skip
        loop = asyncio.get_running_loop()
        for address in live - self._addresses.keys():
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            try:
                ipaddress.ip_address(host)
                self._addresses[address] = (host, int(port))
                continue
            except ValueError:
                pass
            try:
                info = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
                self._addresses[address] = (str(info[0][4][0]), int(port))
            except (OSError, ValueError) as err:
                log.warning("cannot resolve backend %s (%s): not on the fast path", address, err)
                self._addresses[address] = None

    async def _follow_log(self) -> None:
        """Read HAProxy's log ring as it fills (``show events <ring> -w``), line by line."""
        while self.state is State.RUNNING:
            # NOTE: a fresh ring is read whole; after a dropped connection only new lines
            command = f"show events {LOG_RING} {'-w' if self._fresh_ring else '-wn'}\n"
            try:
                reader, writer = await asyncio.open_unix_connection(
                    str(self.layout.admin_socket), limit=1 << 20
                )
            except OSError:
                await asyncio.sleep(0.05)  # HAProxy is restarting
                continue
            try:
                writer.write(command.encode())
                await writer.drain()
                self._fresh_ring = False
                pending = b""
                while chunk := await reader.read(1 << 16):
                    # NOTE: whatever arrived since the last wake-up, not one line per wake-up
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        self.record(line.decode(errors="replace"))
            except OSError as err:
                log.debug("haproxy log ring connection lost: %s", err)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    def record(self, line: str) -> None:
        """One log line: a fast-path call (``<tag> <key> <http status> <grpc-status> <µs>
        <retries> <limit>``, the key naming the model version served, the limit a refused
        call was over or ``-``) or an event such as ``Server i_0/s is DOWN, reason: ...``."""
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "Server" and parts[2:4] == ["is", "DOWN,"]:
            address = self.programmer.address_of(parts[1].partition("/")[0])
            for name, resolved in list(self._addresses.items()):
                if address is not None and resolved == address:
                    log.warning("haproxy marked backend %s down (%s)", name, line)
                    self.on_backend_down(name)
            return
        if len(parts) != 7 or parts[0] != LOG_TAG:
            return
        _, key, status, grpc_status, micros, retries, limited = parts
        self._logged += 1
        route = parse_key(key)
        if route is None:
            return
        protocol, model, version = route
        if limited != "-":
            self.metrics.limited.labels(model, limited).inc()
        if retries.strip("+") not in ("", "0"):
            self.metrics.retries.labels(model).inc()
        code = _GRPC_CODES.get(grpc_status) or _HTTP_CODES.get(status, "UNKNOWN")
        children = self._children.get((key, code))
        if children is None:
            # NOTE: labels() takes a lock and a dict lookup per metric per call otherwise
            # (bounded: a key per fast-path version, times the codes it answered)
            surface = SURFACES[protocol]
            children = self._children[(key, code)] = (
                self.metrics.requests.labels(model, str(version), surface, code),
                self.metrics.fast_path_requests.labels(model, code),
                self.metrics.latency.labels("total", model, surface),
            )
        children[0].inc()
        children[1].inc()
        if micros.isdigit():
            children[2].observe(int(micros) / 1e6)

    async def settle(self) -> None:
        """Wait until every fast-path call HAProxy has counted is in the gateway's metrics
        (its access log arrives a moment after the caller has its answer)."""
        deadline = asyncio.get_running_loop().time() + _SETTLE_S
        while True:
            try:
                (stats,) = await self.api.execute(["show stat -1 3 -1"])
            except RuntimeApiError:
                return  # NOTE: restarting; its counters start again from zero
            header, *lines = stats.splitlines()
            columns = header.lstrip("# ").split(",")
            stot, intercepted = columns.index("stot"), columns.index("intercepted")
            counted = 0
            for row in (line.split(",") for line in lines):
                if row[1] == "FRONTEND":  # NOTE: calls refused over a limit (http-request return)
                    counted += int(row[intercepted] or 0)
                elif row[0] != PYTHON_BACKEND:
                    counted += int(row[stot])
            if counted <= self._logged or asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Drain: HAProxy stops listening and finishes the calls in flight."""
        if self.state in (State.STOPPING, State.CLOSED):
            return
        self.state = State.STOPPING
        self._dirty.set()
        if self._applier is not None:
            await self._applier
        if self._public is not None:
            self._public.close()  # NOTE: HAProxy's copy closes as it soft-stops
        if self._log is not None:
            # NOTE: an open Runtime API session would hold the soft stop for the whole grace
            # period; calls that finish while draining are not counted
            self._log.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._log
        if self.supervisor is not None:
            await self.supervisor.stop(self.grace_s)
        await asyncio.to_thread(self._remove_files)
        self.state = State.CLOSED

    def _remove_files(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.layout.run_dir, ignore_errors=True)
