"""Feeds the router from ZooKeeper: tree watches on /models, /routes and /services.

Each event changes one node of a :class:`TableState` (only that node's record is parsed).
Once per burst of events a task re-derives the entries of the changed models, in slices
that let the serving loop run in between, and publishes the new table with what changed
(:class:`TableChange`); the table is swapped in whole. While ZooKeeper is unreachable the
caches (and so the table) are kept; ``zk_connected`` drops to 0, logged once per outage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.metrics import GatewayMetrics
from gateway.table import RoutingTable, TableChange, TableState
from registry import Registry, TreeEvent, layout
from registry.client import TreeWatch

log = logging.getLogger("gateway.watcher")

WATCHED = (layout.MODELS, layout.ROUTES, layout.SERVICES)
#: Models re-derived between two turns of the event loop (a few milliseconds of work).
SLICE = 200


class TableWatcher:
    def __init__(
        self,
        registry: Registry,
        metrics: GatewayMetrics,
        on_table: Callable[[RoutingTable, TableChange], None],
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.on_table = on_table
        self.state = TableState()
        self.generation = 0
        self.initialized: set[str] = set()
        self.ready = asyncio.Event()
        self._watches: list[TreeWatch] = []
        self._publishing: asyncio.Task[None] | None = None
        self._outage = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, wait_s: float = 30.0) -> None:
        """Start the watches and wait for the first complete table."""
        self._loop = asyncio.get_running_loop()
        self.registry.add_state_listener(self._on_state, self._loop)
        self.metrics.zk_connected.set(1 if self.registry.connected else 0)
        for path in WATCHED:
            handler = self._handler(path)
            watch = await asyncio.to_thread(self.registry.watch_tree, path, handler, self._loop)
            self._watches.append(watch)
        await asyncio.wait_for(self.ready.wait(), wait_s)

    def _handler(self, root: str) -> Callable[[TreeEvent], None]:
        def on_event(event: TreeEvent) -> None:
            if event.kind in ("added", "updated") and event.path:
                self.state.apply(event.path, event.data or b"")
            elif event.kind == "removed" and event.path:
                self.state.apply(event.path, None)
            elif event.kind == "initialized":
                self.initialized.add(root)
            elif event.kind in ("suspended", "lost"):
                self._on_state("suspended")
                return
            elif event.kind == "reconnected":
                self._on_state("connected")
            self._schedule()

        return on_event

    def _on_state(self, state: str) -> None:
        if state == "connected":
            self.metrics.zk_connected.set(1)
            if self._outage:
                self._outage = False
                log.info("ZooKeeper is back; resyncing the routing table")
        else:
            self.metrics.zk_connected.set(0)
            if not self._outage:
                self._outage = True
                log.warning(
                    "ZooKeeper unreachable (%s); serving from the last routing table", state
                )

    def _schedule(self) -> None:
        if (
            self._publishing is not None
            or len(self.initialized) < len(WATCHED)
            or self._loop is None
            or (self.generation and not self.state.dirty)
        ):
            return
        self._publishing = self._loop.create_task(self._publish(), name="table-publish")

    async def _publish(self) -> None:
        while True:
            if self.state.step(SLICE):
                break
            await asyncio.sleep(0)  # NOTE: a slice done: let calls run before the next one
        self.generation += 1
        table, change = self.state.publish(self.generation)
        self._publishing = None
        self.on_table(table, change)
        self.metrics.table_swaps.inc()
        self.ready.set()
        self._schedule()  # NOTE: events that came in after the last slice

    def close(self) -> None:
        if self._publishing is not None:
            self._publishing.cancel()
        for watch in self._watches:
            watch.close()
        self._watches.clear()
