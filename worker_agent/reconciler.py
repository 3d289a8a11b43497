"""Assignments -> desired state -> backend and routes.

One :class:`Slot` per ``model@version`` this worker has or wants. Each slot is driven by
at most one task at a time; a change while it runs marks the slot dirty and the task
goes round again, so the loop is idempotent: it compares what is wanted with what is
there and only does the difference.

- wanted: pull (unless the same artifact is on disk), load (unless the backend already
  serves it), wait until ready (``load_timeout``), then publish the ephemeral route;
- unwanted: delete the route first, wait ``drain_seconds``, unload, remove local files;
- out of memory (:meth:`Reconciler.out_of_memory`): the copy loaded last before the model
  server went over its memory is FAILED and not loaded again while its record stands.

Restart-safe: :meth:`Reconciler.start` adopts what is on disk and what the backend already
serves, so a restarted agent neither downloads nor reloads models needlessly.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from registry import EphemeralNode, Registry, layout
from registry.errors import ModelgateError, UnavailableError, ZooKeeperUnavailableError
from registry.logs import set_call
from registry.records import Assignment, ModelHealth, ModelState, OutOfMemory, Route, Usage
from worker_agent.artifacts import ArtifactStore
from worker_agent.backends import BackendController
from worker_agent.errors import ArtifactError, ArtifactUnavailableError, BackendError
from worker_agent.metrics import MODEL_STATES, WorkerMetrics

log = logging.getLogger("worker_agent.reconciler")

_RETRY_MIN = 2.0
_RETRY_MAX = 60.0
#: How long to retry deleting a route while ZooKeeper is unreachable; longer than any
#: sane session timeout, after which the server has dropped the ephemeral node anyway.
_ROUTE_DELETE_PATIENCE = 60.0


@dataclass(eq=False)
class Slot:
    """One ``model@version`` on this worker."""

    model: str
    version: int
    state: ModelState | None = None
    error: str | None = None
    since: float = field(default_factory=time.time)
    #: The assignment the slot was last brought up for.
    assignment: Assignment | None = None
    #: The assignment whose bring-up failed (not retried unless transient or changed).
    failed_for: Assignment | None = None
    #: The backend generation the failed attempt ran against (a restart allows a retry).
    failed_generation: int = 0
    retry_at: float | None = None
    retries: int = 0
    #: The backend was asked to load it (and not to unload it since).
    loaded: bool = False
    #: Position in the order the backend was asked to load copies (None: not loaded).
    load_order: int | None = None
    #: The model server ran out of memory after this copy was loaded: not loaded again here
    #: while set, and its measured size then (None: the backend does not tell one model's).
    oom: OutOfMemory | None = None
    oom_size_mb: float | None = None
    needs_reload: bool = False
    route: EphemeralNode | None = None
    task: asyncio.Task[None] | None = None
    dirty: bool = False

    @property
    def key(self) -> str:
        return f"{self.model}@{self.version}"

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()


def _oom_error(key: str, oom: OutOfMemory) -> str:
    capacity = f" of {oom.capacity_mb:g} MiB" if oom.capacity_mb is not None else ""
    return (
        f"out of memory: the model server used {oom.memory_mb:g} MiB{capacity} after {key} "
        "was loaded; not loaded again on this worker until memory allows or it is unassigned"
    )


def _same_artifact(a: Assignment | None, b: Assignment | None) -> bool:
    return (
        a is not None
        and b is not None
        and (a.artifact_uri, a.sha256, a.backend) == (b.artifact_uri, b.sha256, b.backend)
    )


class Reconciler:
    """Drives the backend and the routes towards the assignments of one worker."""

    def __init__(
        self,
        registry: Registry,
        worker_id: str,
        backend: BackendController,
        store: ArtifactStore,
        metrics: WorkerMetrics,
        *,
        route_address: Callable[[], str],
        load_timeout: float,
        unload_timeout: float,
        drain_seconds: float,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.registry = registry
        self.worker_id = worker_id
        self.backend = backend
        self.store = store
        self.metrics = metrics
        self.route_address = route_address
        self.load_timeout = load_timeout
        self.unload_timeout = unload_timeout
        self.drain_seconds = drain_seconds
        self.on_change = on_change
        self.slots: dict[str, Slot] = {}
        self.desired: dict[str, Assignment] = {}
        #: False while draining: no route is published, existing ones are withdrawn.
        self.routes_enabled = True
        #: Bumped whenever the model server restarts.
        self.generation = 0
        self._load_orders = itertools.count(1)
        self._stopping = False

    # -- inputs ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Adopt what is already on disk and loaded in the backend."""
        try:
            loaded = await self.backend.discover()
        except UnavailableError as err:  # nothing can be adopted from a server that is down
            log.warning("backend not reachable at start-up (%s); assuming nothing is loaded", err)
            loaded = set()
        on_disk = await asyncio.to_thread(self.store.installed_versions)
        for model, version in sorted(set(loaded) | set(on_disk)):
            slot = self._slot(model, version)
            slot.loaded = (model, version) in loaded
            if slot.loaded:
                slot.load_order = next(self._load_orders)
        if loaded:
            log.info("adopted %d loaded model versions: %s", len(loaded), sorted(loaded))
        try:
            await self.backend.sync()
        except UnavailableError as err:
            log.warning("could not push the model config at start-up: %s", err)

    def set_desired(self, desired: dict[str, Assignment]) -> None:
        """The assignments now wanted on this worker, keyed ``model@version``."""
        self.desired = dict(desired)
        for key in sorted(set(self.slots) | set(desired)):
            slot = self.slots.get(key)
            want = desired.get(key)
            if slot is None and want is None:
                continue
            if slot is not None and want is None and slot.oom is not None:
                log.info("%s unassigned: its out-of-memory record is dropped", key)
                slot.oom = slot.oom_size_mb = None
            if slot is None:
                assert want is not None
                slot = self._slot(want.model, want.version)
            self._kick(slot)

    def set_routes_enabled(self, enabled: bool) -> None:
        """Withdraw every route (False, admin drain) or publish them again (True)."""
        if enabled == self.routes_enabled:
            return
        self.routes_enabled = enabled
        for slot in list(self.slots.values()):
            self._kick(slot)

    def backend_restarted(self) -> None:
        """The model server came back empty: reload everything wanted."""
        self.backend.forget_all()
        self.generation += 1
        for slot in list(self.slots.values()):
            slot.loaded = False
            slot.load_order = None
            slot.needs_reload = True
            self._kick(slot)

    def out_of_memory(self, record: OutOfMemory, measured: Mapping[str, Usage]) -> str | None:
        """The model server went over its memory: the copy it was last asked to load is
        recorded (with its ``measured`` size, if there) and not loaded again while the record
        stands. Call before :meth:`backend_restarted`. Returns its key (None: nothing loaded)."""
        candidates = [s for s in self.slots.values() if s.load_order is not None]
        if not candidates:
            return None
        slot = max(candidates, key=lambda s: s.load_order or 0)
        usage = measured.get(slot.key)
        slot.oom, slot.oom_size_mb = record, usage.memory_mb if usage else None
        log.error("%s", _oom_error(slot.key, record))
        self.on_change()
        return slot.key

    def release_out_of_memory(self, free_mb: float, margin_mb: float) -> str | None:
        """Memory allows again: drop the record of one out-of-memory copy whose measured
        size plus ``margin_mb`` fits in ``free_mb`` and load it. Only once every other copy
        here is READY (the memory measured is that of everything else served) and none is
        being loaded or unloaded. Returns its key, if any."""
        if any(
            s.busy or (s.oom is None and (s.state != "READY" or not s.loaded or s.needs_reload))
            for s in self.slots.values()
        ):
            return None
        for slot in sorted(self.slots.values(), key=lambda s: s.key):
            if slot.oom is not None and slot.oom_size_mb is not None:
                if free_mb >= slot.oom_size_mb + margin_mb:
                    log.info(
                        "%s: %g MiB free fits its %g MiB (+%g): loading it again",
                        slot.key,
                        free_mb,
                        slot.oom_size_mb,
                        margin_mb,
                    )
                    slot.oom = slot.oom_size_mb = None
                    slot.failed_for = None
                    self._kick(slot)
                    return slot.key
        return None

    # -- state -----------------------------------------------------------------------------

    def health(self) -> dict[str, ModelHealth]:
        return {
            key: ModelHealth(state=slot.state, error=slot.error, since=slot.since)
            for key, slot in sorted(self.slots.items())
            if slot.state is not None
        }

    def ooms(self) -> dict[str, OutOfMemory]:
        """Out-of-memory records per ``model@version`` that stand."""
        return {key: s.oom for key, s in sorted(self.slots.items()) if s.oom is not None}

    def routes(self) -> list[str]:
        return sorted(slot.key for slot in self.slots.values() if slot.route is not None)

    def _slot(self, model: str, version: int) -> Slot:
        key = layout.assignment_key(model, version)
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = Slot(model, version)
        return slot

    def _set(self, slot: Slot, state: ModelState | None, error: str | None = None) -> None:
        if (slot.state, slot.error) != (state, error):
            slot.state, slot.error, slot.since = state, error, time.time()
            if state == "FAILED":
                log.warning("%s FAILED: %s", slot.key, error)
            else:
                log.info("%s -> %s", slot.key, state or "gone")
        counts = dict.fromkeys(MODEL_STATES, 0)
        for s in self.slots.values():
            if s.state is not None:
                counts[s.state] += 1
        for name, count in counts.items():
            self.metrics.models.labels(state=name).set(count)
        self.metrics.routes.set(sum(1 for s in self.slots.values() if s.route is not None))
        self.on_change()

    # -- driving ---------------------------------------------------------------------------

    def _kick(self, slot: Slot) -> None:
        if self._stopping:
            return
        slot.dirty = True
        if not slot.busy:
            slot.task = asyncio.get_running_loop().create_task(
                self._drive(slot), name=f"reconcile {slot.key}"
            )

    async def _drive(self, slot: Slot) -> None:
        set_call(slot.model, str(slot.version))
        try:
            while slot.dirty and not self._stopping:
                slot.dirty = False
                want = self.desired.get(slot.key)
                if want is not None:
                    await self._bring_up(slot, want)
                else:
                    await self._bring_down(slot, remove_files=True)
                    if not slot.dirty and slot.state is None and self.slots.get(slot.key) is slot:
                        del self.slots[slot.key]
                        self._set(slot, None)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: keep the agent alive, record it on the model
            log.exception("reconciling %s failed", slot.key)
            self._set(slot, "FAILED", "internal error in the worker agent (see its log)")

    async def _bring_up(self, slot: Slot, want: Assignment) -> None:
        if want.backend != self.backend.kind:
            await self._bring_down(slot, remove_files=False)
            slot.failed_for, slot.failed_generation = want, self.generation
            self._set(
                slot,
                "FAILED",
                f"assigned for backend {want.backend!r} but this worker runs {self.backend.kind!r}",
            )
            return
        if slot.oom is not None:
            await self._withdraw_route(slot)
            if slot.loaded:
                await self._unload(slot)
            slot.failed_for, slot.failed_generation, slot.retry_at = want, self.generation, None
            self._set(slot, "FAILED", _oom_error(slot.key, slot.oom))
            return
        if (
            slot.failed_for is not None
            and _same_artifact(slot.failed_for, want)
            and slot.failed_generation == self.generation
        ):
            if slot.retry_at is None or time.monotonic() < slot.retry_at:
                return  # a permanent failure, or a transient one not yet due for retry
        if (
            slot.loaded
            and slot.assignment is not None
            and not _same_artifact(slot.assignment, want)
        ):
            log.info("%s: artifact changed, replacing it", slot.key)
            await self._bring_down(slot, remove_files=False)
        if (
            slot.state == "READY"
            and slot.loaded
            and not slot.needs_reload
            and _same_artifact(slot.assignment, want)
        ):
            await self._sync_route(slot)
            return

        if slot.route is not None:  # reloading: the old instance is not serving any more
            await self._withdraw_route(slot)
        self._set(slot, "LOADING")
        generation = self.generation
        try:
            pulled = await self._pull(slot, want)
            if pulled or not slot.loaded or slot.needs_reload or not await self._ready(slot):
                await self._load(slot)
        except (ArtifactUnavailableError, ZooKeeperUnavailableError) as err:
            self._fail(slot, want, generation, str(err), transient=True)
            return
        except ModelgateError as err:
            transient = not isinstance(err, ArtifactError | BackendError)
            self._fail(slot, want, generation, str(err), transient=transient)
            return
        slot.assignment, slot.failed_for, slot.retry_at, slot.retries = want, None, None, 0
        slot.needs_reload = False
        self._set(slot, "READY")
        await self._sync_route(slot)

    def _fail(
        self, slot: Slot, want: Assignment, generation: int, error: str, *, transient: bool
    ) -> None:
        slot.failed_for, slot.failed_generation = want, generation
        if transient:
            slot.retries += 1
            slot.retry_at = time.monotonic() + min(_RETRY_MAX, _RETRY_MIN * 2 ** (slot.retries - 1))
        else:
            slot.retry_at = None
        self._set(slot, "FAILED", error)

    async def _pull(self, slot: Slot, want: Assignment) -> bool:
        """Put the artifact on disk unless the same one is there; True if it was pulled."""
        if await asyncio.to_thread(
            self.store.installed, slot.model, slot.version, want.artifact_uri, want.sha256
        ):
            return False
        log.info("pulling %s from %s", slot.key, want.artifact_uri)
        try:
            result = await asyncio.to_thread(
                self.store.install, slot.model, slot.version, want.artifact_uri, want.sha256
            )
        except ArtifactError:
            self.metrics.pulls.labels(result="rejected").inc()
            raise
        except Exception:
            self.metrics.pulls.labels(result="unavailable").inc()
            raise
        self.metrics.pulls.labels(result="ok").inc()
        self.metrics.pull_seconds.observe(result.seconds)
        return True

    async def _ready(self, slot: Slot) -> bool:
        return await self.backend.is_ready(slot.model, slot.version)

    async def _load(self, slot: Slot) -> None:
        started = time.monotonic()
        path = self.store.version_dir(slot.model, slot.version)
        slot.load_order = next(self._load_orders)
        try:
            await self.backend.load(slot.model, slot.version, path, self.load_timeout)
        except ModelgateError as err:
            self.metrics.loads.labels(result="error").inc()
            # NOTE: a server that died during the load keeps this as the copy it was asked
            # to load last (it may have died of it); one that refused it holds none of it.
            if not isinstance(err, UnavailableError):
                slot.load_order = None
            raise
        slot.loaded = True
        deadline = started + self.load_timeout
        while not await self._ready(slot):
            error = await self.backend.load_error(slot.model, slot.version)
            if error is not None:
                self.metrics.loads.labels(result="error").inc()
                raise BackendError(error)
            if time.monotonic() > deadline:
                self.metrics.loads.labels(result="error").inc()
                raise BackendError(
                    f"{slot.key} not ready within {self.load_timeout:g}s after the load request"
                )
            await asyncio.sleep(0.1)
        self.metrics.loads.labels(result="ok").inc()
        self.metrics.load_seconds.observe(time.monotonic() - started)

    async def _bring_down(self, slot: Slot, *, remove_files: bool) -> None:
        had_route = await self._withdraw_route(slot)
        on_disk = remove_files and await asyncio.to_thread(
            self.store.version_dir(slot.model, slot.version).exists
        )
        if slot.loaded or on_disk:
            self._set(slot, "UNLOADING")
            if had_route and self.drain_seconds:
                await asyncio.sleep(self.drain_seconds)
            if slot.loaded:
                await self._unload(slot)
            if remove_files:
                await asyncio.to_thread(self.store.remove, slot.model, slot.version)
        slot.assignment = slot.failed_for = slot.retry_at = None
        slot.retries = 0
        self._set(slot, None)

    async def _unload(self, slot: Slot) -> None:
        try:
            await self.backend.unload(slot.model, slot.version, self.unload_timeout)
            self.metrics.unloads.inc()
        except ModelgateError as err:  # the server may be gone; nothing is served anyway
            log.warning("unloading %s: %s", slot.key, err)
        slot.loaded = False
        slot.load_order = None

    # -- routes ----------------------------------------------------------------------------

    async def _sync_route(self, slot: Slot) -> None:
        """Publish the route of a READY slot (or withdraw it while routes are disabled)."""
        if not self.routes_enabled or slot.state != "READY":
            await self._withdraw_route(slot)
            return
        if slot.route is not None:
            return
        record = Route(
            model=slot.model,
            version=slot.version,
            worker_id=self.worker_id,
            address=self.route_address(),
            protocol=self.backend.protocol,
        )
        path = layout.route(slot.model, slot.version, self.worker_id)
        try:
            slot.route = await asyncio.to_thread(self.registry.register_ephemeral, path, record)
        except ZooKeeperUnavailableError as err:
            log.warning("route %s not published yet (retried at the next heartbeat): %s", path, err)
            return
        log.info("route %s published -> %s", path, record.address)
        self._set(slot, slot.state)

    async def _withdraw_route(self, slot: Slot) -> bool:
        """Delete the slot's route (retrying while ZooKeeper is away); True if it had one."""
        node = slot.route
        if node is None:
            return False
        deadline = time.monotonic() + _ROUTE_DELETE_PATIENCE
        while True:
            try:
                await asyncio.to_thread(node.remove)
                break
            except ZooKeeperUnavailableError as err:
                if time.monotonic() > deadline:
                    # NOTE: by now the session has expired on the server, and with it the
                    # ephemeral route; the node is not re-created (remove() marked it).
                    log.error("route %s not deleted, ZooKeeper unreachable: %s", node.path, err)
                    break
                log.warning("route %s not deleted yet, retrying: %s", node.path, err)
                await asyncio.sleep(0.5)
        slot.route = None
        log.info("route %s withdrawn", node.path)
        self._set(slot, slot.state)
        return True

    # -- health ----------------------------------------------------------------------------

    async def probe(self, backend_live: bool) -> None:
        """Heartbeat: routes follow readiness; transient failures are retried when due."""
        for slot in list(self.slots.values()):
            if slot.busy or self._stopping:
                continue
            want = self.desired.get(slot.key)
            if want is None:
                continue
            if slot.state == "FAILED" and slot.retry_at is not None:
                if time.monotonic() >= slot.retry_at:
                    self._kick(slot)
                continue
            if not slot.loaded:
                continue
            ready = await self._ready(slot)
            if slot.busy:
                continue
            current = slot.assignment or slot.failed_for
            if ready and slot.state != "READY" and _same_artifact(current, want):
                # e.g. ready after all, later than --load-timeout
                slot.assignment, slot.failed_for, slot.retry_at = want, None, None
                self._set(slot, "READY")
                await self._sync_route(slot)
            elif ready and slot.state == "READY":
                await self._sync_route(slot)  # retries a route that ZooKeeper refused
            elif not ready and slot.state == "READY":
                await self._withdraw_route(slot)
                self._set(slot, "FAILED", "the backend reports the model not ready")
                if backend_live:
                    slot.needs_reload = True
                    slot.failed_for = None
                    self._kick(slot)

    # -- shutdown --------------------------------------------------------------------------

    async def drain(self) -> None:
        """SIGTERM: withdraw every route, wait ``drain_seconds``, unload everything."""
        self._stopping = True
        self.routes_enabled = False
        await self._cancel_tasks()
        had_routes = False
        for slot in list(self.slots.values()):
            had_routes |= await self._withdraw_route(slot)
        # NOTE: a load cancelled half-way may have reached the server: unload it too.
        loaded = [s for s in self.slots.values() if s.loaded or s.state == "LOADING"]
        for slot in loaded:
            self._set(slot, "UNLOADING")
        if had_routes and self.drain_seconds:
            log.info("draining: waiting %gs before unloading", self.drain_seconds)
            await asyncio.sleep(self.drain_seconds)
        for slot in loaded:
            await self._unload(slot)
            self._set(slot, None)

    async def abandon(self) -> None:
        """Stop driving without touching the backend (a crash, for tests and shutdown)."""
        self._stopping = True
        await self._cancel_tasks()

    async def _cancel_tasks(self) -> None:
        tasks = [s.task for s in self.slots.values() if s.task is not None and not s.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
