"""A small wrapper on kazoo: connect with retry, chroot, typed records, ephemeral
registration that survives session loss, and watches delivered to asyncio.

kazoo runs its own threads; every callback registered with a ``loop`` is handed to that
loop with ``loop.call_soon_threadsafe``. The read/write methods block (briefly, on
loopback): call them from asyncio code with ``await asyncio.to_thread(...)``.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    RolledBackError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.recipe.cache import TreeCache
from kazoo.recipe.cache import TreeEvent as KazooTreeEvent
from kazoo.recipe.election import Election
from kazoo.retry import KazooRetry, RetryFailedError

from registry import layout
from registry.errors import (
    ConflictError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ZooKeeperUnavailableError,
)
from registry.records import Record

log = logging.getLogger("registry.zk")

R = TypeVar("R", bound=Record)
ConnectionState = Literal["connected", "suspended", "lost"]

_STATES: dict[str, ConnectionState] = {
    KazooState.CONNECTED: "connected",
    KazooState.SUSPENDED: "suspended",
    KazooState.LOST: "lost",
}

_UNAVAILABLE = (
    ConnectionLoss,
    ConnectionClosedError,
    SessionExpiredError,
    OperationTimeoutError,
    RetryFailedError,
    KazooTimeoutError,
)


@dataclass(frozen=True)
class TreeEvent:
    """A change under a watched subtree. ``path`` is relative to the registry root."""

    kind: Literal["added", "updated", "removed", "initialized", "suspended", "reconnected", "lost"]
    path: str | None = None
    data: bytes | None = None


_TREE_KINDS: dict[int, Any] = {
    KazooTreeEvent.NODE_ADDED: "added",
    KazooTreeEvent.NODE_UPDATED: "updated",
    KazooTreeEvent.NODE_REMOVED: "removed",
    KazooTreeEvent.INITIALIZED: "initialized",
    KazooTreeEvent.CONNECTION_SUSPENDED: "suspended",
    KazooTreeEvent.CONNECTION_RECONNECTED: "reconnected",
    KazooTreeEvent.CONNECTION_LOST: "lost",
}


#: Most requests :meth:`Registry.write_many` has in flight. NOTE: ZooKeeper answers a
#: session's requests in order, so a ping queued behind thousands of writes (each one
#: fsynced) can miss the session timeout: a bounded window keeps the session alive.
_IN_FLIGHT = 500


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _deliver(
    loop: asyncio.AbstractEventLoop | None, callback: Callable[..., Any]
) -> Callable[..., None]:
    """Wrap ``callback`` so kazoo's threads hand their calls to ``loop`` (or call it directly)."""
    if loop is None:
        return callback

    def handoff(*args: Any) -> None:
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the watcher's owner is gone
            pass

    return handoff


class Registry:
    """modelgate's view of ZooKeeper, chrooted at ``root``.

    ``hosts`` is a kazoo connection string ("h1:2181,h2:2181"). :meth:`start` connects,
    retrying until ``connect_timeout`` and then raising
    :class:`~registry.errors.ZooKeeperUnavailableError` naming the hosts.
    """

    def __init__(
        self,
        hosts: str,
        root: str = layout.DEFAULT_ROOT,
        *,
        connect_timeout: float = 10.0,
        session_timeout: float = 10.0,
        operation_timeout: float = 10.0,
    ) -> None:
        if not root.startswith("/") or (root.endswith("/") and root != "/"):
            raise ValueError(
                f"ZooKeeper root must be an absolute path without a trailing '/': {root!r}"
            )
        self.hosts = hosts
        self.root = root
        self.connect_timeout = connect_timeout
        self.operation_timeout = operation_timeout
        self._client = KazooClient(
            hosts=hosts,
            timeout=session_timeout,
            connection_retry=KazooRetry(max_tries=-1, max_delay=1.0),
            command_retry=KazooRetry(max_tries=-1, max_delay=1.0, deadline=operation_timeout),
        )
        self._client.add_listener(self._on_state)
        self._closing = False
        self._state_listeners: list[Callable[[ConnectionState], None]] = []
        self._ephemerals: list[EphemeralNode] = []
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Registry:
        """Connect, create the root and the top-level folders; return self."""
        try:
            self._client.start(timeout=self.connect_timeout)
        except KazooTimeoutError:
            self._client.stop()
            self._client.close()
            raise ZooKeeperUnavailableError(
                f"could not connect to ZooKeeper at {self.hosts} within "
                f"{self.connect_timeout:g}s; is it running and reachable?"
            ) from None
        if self.root != "/":
            self._op(self._client.ensure_path_async, self.root)
            self._client.chroot = self.root
        for path in layout.TOP_LEVEL:
            self._op(self._client.ensure_path_async, path)
        log.info("connected to ZooKeeper at %s (root %s)", self.hosts, self.root)
        return self

    def stop(self) -> None:
        """Close the session: every ephemeral node of this registry disappears.

        The session's end is expected here, so it is neither logged as a loss nor passed
        to ephemeral nodes (which would try to re-create themselves) or state listeners.
        """
        self._closing = True
        self._client.stop()
        self._client.close()

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self._client.connected

    @property
    def session_id(self) -> int | None:
        """The current ZooKeeper session id (changes after a session is lost)."""
        cid = self._client.client_id
        return cid[0] if cid else None

    @property
    def kazoo(self) -> KazooClient:
        """The underlying kazoo client, for test helpers (expire/drop a session)."""
        return self._client

    def add_state_listener(
        self,
        callback: Callable[[ConnectionState], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Call ``callback("connected"|"suspended"|"lost")`` on every connection change."""
        self._state_listeners.append(_deliver(loop, callback))

    def _on_state(self, state: str) -> None:
        mapped = _STATES[state]
        if self._closing:
            log.debug("ZooKeeper session closed (%s): %s", self.hosts, mapped)
            return
        if mapped == "suspended":
            log.warning("ZooKeeper connection suspended (%s)", self.hosts)
        elif mapped == "lost":
            log.warning(
                "ZooKeeper session lost (%s); ephemeral nodes will be re-created", self.hosts
            )
        for node in list(self._ephemerals):
            node._on_state(mapped)
        for listener in self._state_listeners:
            listener(mapped)

    def _op(self, call_async: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one kazoo ``*_async`` call under ``client.retry``, each try bounded in time.

        NOTE: kazoo's blocking calls wait without limit while the client is disconnected
        (requests queue until it reconnects); waiting on the async result with a timeout
        turns an outage into ZooKeeperUnavailableError instead of a hang.
        """
        timeout = self.operation_timeout
        return self._client.retry(lambda: call_async(*args, **kwargs).get(timeout=timeout))

    def _delete_tree(self, path: str) -> None:
        for child in self._op(self._client.get_children_async, path):
            try:
                self._delete_tree(posixpath.join(path, child))
            except NoNodeError:
                pass
        self._op(self._client.delete_async, path)

    # -- reads ---------------------------------------------------------------------------

    @contextmanager
    def _zk(self, path: str) -> Iterator[None]:
        """Map kazoo's connection errors to ZooKeeperUnavailableError naming the path."""
        try:
            yield
        except _UNAVAILABLE as err:
            raise ZooKeeperUnavailableError(
                f"ZooKeeper at {self.hosts} unavailable while accessing {path}: "
                f"{type(err).__name__}"
            ) from None

    def exists(self, path: str) -> bool:
        with self._zk(path):
            return self._op(self._client.exists_async, path) is not None

    def get(self, path: str, record_type: type[R]) -> tuple[R, int]:
        """Return the record at ``path`` and its data version; NotFoundError if missing."""
        with self._zk(path):
            try:
                data, stat = self._op(self._client.get_async, path)
            except NoNodeError:
                raise NotFoundError(f"{path} does not exist") from None
        return record_type.from_bytes(path, data), stat.version

    def read(self, path: str, record_type: type[R]) -> R | None:
        """Return the record at ``path``, or None if the node does not exist."""
        try:
            return self.get(path, record_type)[0]
        except NotFoundError:
            return None

    def children(self, path: str) -> list[str]:
        """Names of the children of ``path`` (sorted); [] if the node does not exist."""
        with self._zk(path):
            try:
                return sorted(self._op(self._client.get_children_async, path))
            except NoNodeError:
                return []

    def read_children(self, path: str, record_type: type[R]) -> dict[str, R]:
        """Records of every child of ``path`` that exists, keyed by child name."""
        records: dict[str, R] = {}
        for name in self.children(path):
            record = self.read(posixpath.join(path, name), record_type)
            if record is not None:
                records[name] = record
        return records

    def snapshot(self, path: str) -> dict[str, bytes]:
        """Data of ``path`` and all its descendants, keyed by path (one level per round trip).

        Not atomic: nodes that change while it reads may be seen old or new.
        """
        result: dict[str, bytes] = {}
        frontier = [path]
        timeout = self.operation_timeout
        with self._zk(path):
            while frontier:
                kids = [(p, self._client.get_children_async(p)) for p in frontier]
                datas = [(p, self._client.get_async(p)) for p in frontier]
                frontier = []
                for p, req in kids:
                    try:
                        frontier.extend(posixpath.join(p, k) for k in req.get(timeout=timeout))
                    except NoNodeError:
                        pass
                for p, req in datas:
                    try:
                        result[p] = req.get(timeout=timeout)[0]
                    except NoNodeError:
                        pass
        return result

    # -- writes --------------------------------------------------------------------------

    def create(self, path: str, record: Record) -> None:
        """Create a persistent node (and its parents); ConflictError if it exists."""
        data = record.to_bytes(path)
        with self._zk(path):
            try:
                self._op(self._client.create_async, path, data, makepath=True)
            except NodeExistsError:
                raise ConflictError(f"{path} already exists") from None

    def put(self, path: str, record: Record) -> None:
        """Create or overwrite a persistent node, whatever its version."""
        data = record.to_bytes(path)
        with self._zk(path):
            try:
                self._op(self._client.create_async, path, data, makepath=True)
            except NodeExistsError:
                self._op(self._client.set_async, path, data)

    def update(self, path: str, record: Record, version: int) -> int:
        """Compare-and-set: write only if the node is still at ``version``; return the new one.

        Raises ConflictError if someone else changed the node since it was read, and
        NotFoundError if it was deleted.
        """
        data = record.to_bytes(path)
        with self._zk(path):
            try:
                stat = self._op(self._client.set_async, path, data, version=version)
            except BadVersionError:
                raise ConflictError(
                    f"{path} changed since it was read (expected version {version}); "
                    "re-read it and retry"
                ) from None
            except NoNodeError:
                raise NotFoundError(f"{path} does not exist") from None
        return int(stat.version)

    def delete(self, path: str, *, version: int = -1, recursive: bool = False) -> bool:
        """Delete ``path``; return False if it did not exist.

        With ``version`` the delete is compare-and-set (ConflictError on mismatch). Without
        ``recursive`` a node with children raises FailedPreconditionError.
        """
        with self._zk(path):
            try:
                if recursive:
                    self._delete_tree(path)
                else:
                    self._op(self._client.delete_async, path, version=version)
            except NoNodeError:
                return False
            except BadVersionError:
                raise ConflictError(
                    f"{path} changed since it was read (expected version {version})"
                ) from None
            except NotEmptyError:
                raise FailedPreconditionError(f"{path} has children") from None
        return True

    def transaction(self) -> Transaction:
        """A group of writes ZooKeeper applies all together or not at all (a multi)."""
        return Transaction(self)

    def write_many(self, puts: Mapping[str, Record], deletes: Iterable[str] = ()) -> None:
        """:meth:`put` every record of ``puts``, then :meth:`delete` every path of ``deletes``.

        The requests are pipelined (sent without waiting for each answer): a batch costs a
        few round trips, not one per node. Missing parents are created level by level, once
        each. Not atomic; every put is answered before the first delete is sent
        (make-before-break). A path already gone is not an error.
        """
        timeout = self.operation_timeout
        data = {p: r.to_bytes(p) for p, r in puts.items()}
        with self._zk(next(iter(data), "(batch)")):
            for chunk in _chunks(list(data), _IN_FLIGHT):
                orphans = self._create_many({p: data[p] for p in chunk}, timeout)
                if orphans:
                    self._ensure_parents(orphans, timeout)
                    if self._create_many({p: data[p] for p in orphans}, timeout):
                        raise NoNodeError(f"parents of {orphans[0]} vanished while writing")
            for chunk in _chunks(list(deletes), _IN_FLIGHT):
                for request in [self._client.delete_async(path) for path in chunk]:
                    try:
                        request.get(timeout=timeout)
                    except NoNodeError:
                        pass

    def _create_many(self, data: Mapping[str, bytes], timeout: float) -> list[str]:
        """Create-or-overwrite each node, pipelined; return the paths whose parent is missing."""
        sent = [(p, d, self._client.create_async(p, d)) for p, d in data.items()]
        overwrites, orphans = [], []
        for path, value, request in sent:
            try:
                request.get(timeout=timeout)
            except NodeExistsError:
                overwrites.append(self._client.set_async(path, value))
            except NoNodeError:
                orphans.append(path)
        for request in overwrites:
            request.get(timeout=timeout)
        return orphans

    def _ensure_parents(self, paths: Iterable[str], timeout: float) -> None:
        """Create the missing ancestors of ``paths`` (empty nodes), one level per round trip."""
        ancestors: set[str] = set()
        for path in paths:
            parent = posixpath.dirname(path)
            while parent != "/" and parent not in ancestors:
                ancestors.add(parent)
                parent = posixpath.dirname(parent)
        for depth in sorted({p.count("/") for p in ancestors}):
            level = sorted(p for p in ancestors if p.count("/") == depth)
            for chunk in _chunks(level, _IN_FLIGHT):
                for request in [self._client.create_async(p, b"") for p in chunk]:
                    try:
                        request.get(timeout=timeout)
                    except NodeExistsError:
                        pass

    def ensure_path(self, path: str) -> None:
        """Create ``path`` and its parents as empty persistent nodes if missing."""
        with self._zk(path):
            self._op(self._client.ensure_path_async, path)

    def register_ephemeral(self, path: str, record: Record) -> EphemeralNode:
        """Create an ephemeral node that is re-created whenever the session is lost.

        Follows kazoo's Party recipe: created under ``client.retry``, NodeExistsError
        handled (a node left by an earlier session of ours is replaced), re-created with
        the latest record after a LOST session reconnects.
        """
        node = EphemeralNode(self, path, record)
        node._create()
        with self._lock:
            self._ephemerals.append(node)
        return node

    def _forget(self, node: EphemeralNode) -> None:
        with self._lock:
            if node in self._ephemerals:
                self._ephemerals.remove(node)

    # -- watches -------------------------------------------------------------------------

    def watch_children(
        self,
        path: str,
        callback: Callable[[list[str]], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Watch:
        """Call ``callback(sorted_children)`` now and on every change of ``path``'s children.

        ``path`` is created (empty, persistent) if missing so the watch never stops.
        """
        self.ensure_path(path)
        watch = Watch()
        deliver = _deliver(loop, callback)

        def on_children(children: list[str]) -> bool | None:
            if watch.cancelled:
                return False
            deliver(sorted(children))
            return None

        self._client.ChildrenWatch(path, on_children)
        return watch

    def watch_data(
        self,
        path: str,
        callback: Callable[[bytes | None], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Watch:
        """Call ``callback(data)`` now and on every change of ``path`` (None when deleted)."""
        watch = Watch()
        deliver = _deliver(loop, callback)

        def on_data(data: bytes | None, _stat: Any) -> bool | None:
            if watch.cancelled:
                return False
            deliver(data)
            return None

        self._client.DataWatch(path, on_data)
        return watch

    def watch_tree(
        self,
        path: str,
        callback: Callable[[TreeEvent], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> TreeWatch:
        """Watch every node under ``path`` with kazoo's TreeCache.

        ``callback`` gets an ``added`` event per existing node, then ``initialized``, then
        every change; connection events (``suspended``/``reconnected``/``lost``) too.
        The cache keeps its content while ZooKeeper is unreachable and resyncs after.
        """
        self.ensure_path(path)
        cache = TreeCache(self._client, path)
        deliver = _deliver(loop, callback)

        def on_event(event: KazooTreeEvent) -> None:
            kind = _TREE_KINDS[event.event_type]
            node = event.event_data
            if node is None:
                deliver(TreeEvent(kind))
            else:
                deliver(TreeEvent(kind, node.path, node.data))

        cache.listen(on_event)
        cache.start()
        return TreeWatch(cache)

    def election(self, identifier: str) -> Election:
        """kazoo's Election recipe at the manager leader path."""
        return self._client.Election(layout.MANAGER_LEADER, identifier)


#: ZooKeeper's default jute.maxbuffer: the largest request a server accepts, a multi included.
MAX_REQUEST_BYTES = 1024 * 1024


class Transaction:
    """Writes committed atomically by :meth:`commit`: every one, or (on any failure) none.

    Compare-and-set updates (``version`` as read) make a read-modify-write of several nodes
    safe against a concurrent writer: the whole group fails with ConflictError naming the
    node that changed, and nothing is written. One transaction is one ZooKeeper request,
    bounded by :data:`MAX_REQUEST_BYTES`; use :meth:`Registry.write_many` for bulk writes
    that need not be atomic.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        #: (operation, path, data, version), in order.
        self._ops: list[tuple[str, str, bytes, int]] = []

    def create(self, path: str, record: Record) -> Transaction:
        """Create ``path``, and its missing parents as empty nodes (ConflictError at commit
        if it exists)."""
        self._ops.append(("create", path, record.to_bytes(path), -1))
        return self

    def update(self, path: str, record: Record, version: int) -> Transaction:
        """Replace ``path``'s record if the node is still at ``version``."""
        self._ops.append(("update", path, record.to_bytes(path), version))
        return self

    def delete(self, path: str, version: int = -1) -> Transaction:
        """Delete ``path`` (at ``version``; -1: any)."""
        self._ops.append(("delete", path, b"", version))
        return self

    def commit(self) -> None:
        """Apply every write, or none. Raises ConflictError (a node changed since it was
        read, or a created one exists) or NotFoundError (an updated or deleted one is gone),
        naming the node; InvalidArgumentError when the group is over one request's size.

        NOTE: if the connection drops after ZooKeeper applied the group, the retry finds
        the nodes changed and reports a conflict: re-read before retrying.
        """
        if not self._ops:
            return
        size = sum(len(path) + len(data) for _, path, data, _ in self._ops)
        if size > MAX_REQUEST_BYTES:
            raise InvalidArgumentError(
                f"a transaction of {len(self._ops)} writes ({size} bytes) is over ZooKeeper's "
                f"{MAX_REQUEST_BYTES}-byte request limit; split it"
            )
        reg = self.registry
        with reg._zk(self._ops[0][1]):
            results = reg._op(self._send)
            created = [path for operation, path, _, _ in self._ops if operation == "create"]
            if any(isinstance(r, NoNodeError) for r in results) and created:
                # NOTE: a missing parent, perhaps: make the parents (empty nodes, as create
                # and write_many do) and send the group once more
                reg._ensure_parents(created, reg.operation_timeout)
                results = reg._op(self._send)
        for (operation, path, _, version), result in zip(self._ops, results, strict=True):
            if isinstance(result, RolledBackError) or not isinstance(result, Exception):
                continue
            if isinstance(result, BadVersionError):
                raise ConflictError(
                    f"{path} changed since it was read (expected version {version}); "
                    "nothing was written: re-read it and retry"
                )
            if isinstance(result, NodeExistsError):
                raise ConflictError(f"{path} already exists; nothing was written")
            if isinstance(result, NoNodeError):
                raise NotFoundError(
                    f"cannot {operation} {path}: it does not exist; nothing was written"
                )
            raise result

    def _send(self) -> Any:
        txn = self.registry.kazoo.transaction()
        for operation, path, data, version in self._ops:
            if operation == "create":
                txn.create(path, data)
            elif operation == "update":
                txn.set_data(path, data, version)
            else:
                txn.delete(path, version)
        return txn.commit_async()


class Watch:
    """Handle of a children/data watch; :meth:`cancel` stops callbacks."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class TreeWatch:
    """Handle of a subtree watch (a kazoo TreeCache)."""

    def __init__(self, cache: TreeCache) -> None:
        self._cache = cache

    def data(self, path: str) -> bytes | None:
        """Cached data of ``path`` (None if unknown)."""
        node = self._cache.get_data(path)
        return None if node is None else node.data

    def children(self, path: str) -> list[str]:
        """Cached children names of ``path`` ([] if unknown)."""
        return sorted(self._cache.get_children(path) or [])

    def close(self) -> None:
        self._cache.close()


class EphemeralNode:
    """An ephemeral node kept alive across session loss. Use :meth:`update` to change it."""

    def __init__(self, registry: Registry, path: str, record: Record) -> None:
        self.registry = registry
        self.path = path
        self._record = record
        self._data = record.to_bytes(path)
        self._lock = threading.Lock()
        self._lost = False
        self._removed = False
        self.recreated = 0

    @property
    def record(self) -> Record:
        return self._record

    def _create(self) -> None:
        reg, client = self.registry, self.registry.kazoo
        with self._lock:
            if self._removed:
                return
            with reg._zk(self.path):
                try:
                    reg._op(
                        client.create_async, self.path, self._data, ephemeral=True, makepath=True
                    )
                    return
                except NodeExistsError:
                    pass
                _, stat = reg._op(client.get_async, self.path)
                if stat.owner_session_id == reg.session_id:
                    reg._op(client.set_async, self.path, self._data)
                    return
                log.warning("replacing %s left by an earlier session", self.path)
                try:
                    reg._op(client.delete_async, self.path)
                except NoNodeError:
                    pass
                reg._op(client.create_async, self.path, self._data, ephemeral=True, makepath=True)

    def _on_state(self, state: ConnectionState) -> None:
        if state == "lost":
            self._lost = True
        elif state == "connected" and self._lost:
            self._lost = False
            # NOTE: kazoo forbids blocking calls in its listener thread; re-create elsewhere.
            self.registry.kazoo.handler.spawn(self._recreate)

    def _recreate(self) -> None:
        try:
            self._create()
            self.recreated += 1
            log.info("re-created ephemeral %s after session loss", self.path)
        except Exception:  # retried at the next session event or update()
            log.exception("could not re-create ephemeral %s", self.path)

    def update(self, record: Record) -> None:
        """Replace the node's record (re-creating the node if it is gone).

        Raises ZooKeeperUnavailableError while ZooKeeper is unreachable; the latest record
        is kept and written when the node is re-created.
        """
        data = record.to_bytes(self.path)
        with self._lock:
            self._record, self._data = record, data
        reg = self.registry
        with reg._zk(self.path):
            try:
                reg._op(reg.kazoo.set_async, self.path, data)
            except NoNodeError:
                self._create()

    def remove(self) -> None:
        """Delete the node and stop re-creating it."""
        with self._lock:
            self._removed = True
        self.registry._forget(self)
        self.registry.delete(self.path)
