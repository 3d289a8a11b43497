"""Feeds the router from ZooKeeper: tree watches on /models, /routes and /services.

Every change is applied to a dict of raw nodes; a rebuild is scheduled once per burst of
events and the new table is swapped in whole. While ZooKeeper is unreachable the caches
(and so the table) are kept; ``zk_connected`` drops to 0, logged once per outage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.metrics import GatewayMetrics
from gateway.table import RoutingTable, build_table
from registry import Registry, TreeEvent, layout
from registry.client import TreeWatch

log = logging.getLogger("gateway.watcher")

WATCHED = (layout.MODELS, layout.ROUTES, layout.SERVICES)


class TableWatcher:
    def __init__(
        self,
        registry: Registry,
        metrics: GatewayMetrics,
        on_table: Callable[[RoutingTable], None],
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.on_table = on_table
        self.nodes: dict[str, bytes | None] = {}
        self.generation = 0
        self.initialized: set[str] = set()
        self.ready = asyncio.Event()
        self._watches: list[TreeWatch] = []
        self._scheduled = False
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
                self.nodes[event.path] = event.data
            elif event.kind == "removed" and event.path:
                prefix = event.path + "/"
                for path in [p for p in self.nodes if p == event.path or p.startswith(prefix)]:
                    del self.nodes[path]
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
        if self._scheduled or len(self.initialized) < len(WATCHED) or self._loop is None:
            return
        self._scheduled = True
        self._loop.call_soon(self._rebuild)

    def _rebuild(self) -> None:
        self._scheduled = False
        self.generation += 1
        table = build_table(self.nodes, self.generation)
        self.on_table(table)
        self.metrics.table_swaps.inc()
        self.ready.set()

    def close(self) -> None:
        for watch in self._watches:
            watch.close()
        self._watches.clear()
