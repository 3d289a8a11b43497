"""Feeds the router from ZooKeeper: tree watches on /models, /routes and /services.

Events are queued as they come; one task applies them to a :class:`TableState` (each
changed node's record parsed once), re-derives the entries of the changed models and
publishes the new table with what changed (:class:`TableChange`) once per burst. The work is
done in slices between which the serving loop runs; the table is swapped in whole. While
ZooKeeper is unreachable the caches (and so the table) are kept; ``zk_connected`` drops to
0, logged once per outage.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from gateway.metrics import GatewayMetrics
from gateway.table import SLICE, RoutingTable, TableChange, TableState
from registry import Registry, TreeEvent, layout
from registry.client import TreeWatch

log = logging.getLogger("gateway.watcher")

WATCHED = (layout.MODELS, layout.ROUTES, layout.SERVICES)
#: Queued node changes applied between two turns of the event loop (one parse each).
NODES_PER_SLICE = 1000
#: Seconds between two progress lines while the first table is read.
PROGRESS_S = 10.0


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
        #: Node events received (the first table's progress).
        self.nodes_read = 0
        self.ready = asyncio.Event()
        self._watches: list[TreeWatch] = []
        #: Node changes not applied yet: (path, data), data None for a removed subtree.
        self._queue: deque[tuple[str, bytes | None]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._outage = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, progress_s: float = PROGRESS_S) -> None:
        """Start the watches and wait for the first complete table, however long reading a
        large fleet's nodes takes (kazoo reads them one by one: ~1 ms each on a small
        machine), saying how far it is every ``progress_s``."""
        self._loop = asyncio.get_running_loop()
        self.registry.add_state_listener(self._on_state, self._loop)
        self.metrics.zk_connected.set(1 if self.registry.connected else 0)
        for path in WATCHED:
            handler = self._handler(path)
            watch = await asyncio.to_thread(self.registry.watch_tree, path, handler, self._loop)
            self._watches.append(watch)
        started = self._loop.time()
        while True:
            try:
                await asyncio.wait_for(self.ready.wait(), progress_s)
                return
            except TimeoutError:
                log.info(
                    "reading the routing table from ZooKeeper: %d nodes after %.0f s, "
                    "%d of %d trees complete",
                    self.nodes_read, self._loop.time() - started, len(self.initialized),
                    len(WATCHED),
                )  # fmt: skip

    def _handler(self, root: str) -> Callable[[TreeEvent], None]:
        def on_event(event: TreeEvent) -> None:
            if event.kind in ("added", "updated") and event.path:
                self.nodes_read += 1
                self._queue.append((event.path, event.data or b""))
            elif event.kind == "removed" and event.path:
                self._queue.append((event.path, None))
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
        if self._task is None and self._loop is not None:
            self._task = self._loop.create_task(self._run(), name="table-updates")

    async def _run(self) -> None:
        """Apply the queued changes, then (every watch initialised) derive and publish."""
        while True:
            if self._queue:
                for _ in range(min(NODES_PER_SLICE, len(self._queue))):
                    self.state.apply(*self._queue.popleft())
            elif len(self.initialized) < len(WATCHED) or (self.generation and not self.state.dirty):
                break
            elif self.state.step(SLICE):
                self.generation += 1
                table, change = self.state.publish(self.generation)
                self.on_table(table, change)
                self.metrics.table_swaps.inc()
                self.ready.set()
                break
            await asyncio.sleep(0)  # NOTE: a slice done: let calls run before the next one
        self._task = None

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for watch in self._watches:
            watch.close()
        self._watches.clear()
