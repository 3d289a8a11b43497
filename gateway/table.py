"""The routing table: an immutable snapshot of what ZooKeeper says, swapped atomically.

:class:`TableState` keeps the parsed records of ``/models``, ``/routes`` and ``/services``
and is changed one node at a time; :meth:`TableState.publish` re-derives only the models
whose nodes changed and returns the next :class:`RoutingTable` with a :class:`TableChange`
saying what differs from the previous one. The table's mappings are persistent
(``immutables.Map``): a new snapshot shares everything unchanged with the old one, so a change
costs what changed, never what the fleet holds. :func:`build_table` is the one-shot form.
Nothing here talks to ZooKeeper or gRPC.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

import immutables

from registry import layout
from registry.errors import InvalidRecordError
from registry.records import Model, ModelVersion, Record, Route, RouteProtocol, Service

log = logging.getLogger("gateway.table")

R = TypeVar("R", bound=Record)

#: Models handled between two turns of the serving event loop when many changed at once
#: (a burst of ZooKeeper events, a full resync of HAProxy): a few milliseconds of work.
SLICE = 200


@dataclass(frozen=True)
class Instance:
    """One ready backend instance of one model version."""

    address: str
    #: "kserve", "tfserving" (gRPC) or "rest" (a URL of a third-party service).
    protocol: RouteProtocol | Literal["rest"]
    worker_id: str


@dataclass(frozen=True)
class VersionEntry:
    version: int
    labels: tuple[str, ...] = ()
    instances: tuple[Instance, ...] = ()
    #: URLs of a REST service that fail its health probe: not ready, and called only when
    #: no ready instance is left (as an ejected backend is).
    down: tuple[Instance, ...] = ()


@dataclass(frozen=True)
class ModelEntry:
    name: str
    record: Model
    versions: Mapping[int, VersionEntry]
    labels: Mapping[str, int]
    #: "triton", "tfserving" or "rest" (a third-party service from /services).
    kind: str = "triton"

    @property
    def ready_versions(self) -> list[int]:
        return sorted(v for v, e in self.versions.items() if e.instances)

    @property
    def ready_instances(self) -> int:
        return sum(len(e.instances) for e in self.versions.values())

    def addresses(self) -> Iterator[str]:
        """The address of every instance (ready or down), once per instance."""
        for ventry in self.versions.values():
            for instance in (*ventry.instances, *ventry.down):
                yield instance.address

    def weights(self) -> dict[int, int]:
        """Share of unpinned traffic per version, over the versions with a ready instance."""
        ready = self.ready_versions
        if not ready:
            return {}
        weights = {
            int(v): w
            for v, w in self.record.traffic.items()
            if v.isdigit() and int(v) in ready and w > 0
        }
        return weights or {ready[-1]: 100}


@dataclass(frozen=True)
class RoutingTable:
    models: immutables.Map[str, ModelEntry] = field(default_factory=immutables.Map)
    services: immutables.Map[str, Service] = field(default_factory=immutables.Map)
    generation: int = 0
    #: Instances per backend address, over every model (the addresses the table routes to).
    addresses: immutables.Map[str, int] = field(default_factory=immutables.Map)


@dataclass(frozen=True)
class TableChange:
    """What differs from one table to the next: the names whose entries in ``models`` (or
    ``services``) changed, and the backend addresses that appeared or disappeared."""

    models: frozenset[str] = frozenset()
    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()

    @classmethod
    def between(cls, old: RoutingTable, new: RoutingTable) -> TableChange:
        """Every name of either table (for a table that did not come from a publish)."""
        return cls(
            frozenset(old.models) | frozenset(new.models) | frozenset(old.services)
            | frozenset(new.services),
            frozenset(a for a in new.addresses if a not in old.addresses),
            frozenset(a for a in old.addresses if a not in new.addresses),
        )  # fmt: skip

    def then(self, later: TableChange) -> TableChange:
        """This change followed by ``later``, as one."""
        return TableChange(
            self.models | later.models,
            (self.added - later.removed) | later.added,
            (self.removed - later.added) | later.removed,
        )


def _parse(path: str, data: bytes | None, record_type: type[R]) -> R | None:
    if not data:
        return None
    try:
        return record_type.from_bytes(path, data)
    except InvalidRecordError as err:
        log.warning("ignoring %s", err)
        return None


class TableState:
    """The parsed records behind the routing table, changed one ZooKeeper node at a time."""

    def __init__(self) -> None:
        self._models: dict[str, Model] = {}
        #: model -> version -> its labels
        self._versions: dict[str, dict[int, tuple[str, ...]]] = {}
        #: model -> version -> route node name (the worker id) -> instance; no empty containers
        self._routes: dict[str, dict[int, dict[str, Instance]]] = {}
        #: NOTE: one Instance per (address, protocol, worker) shared by every model it serves
        #: (a fleet has many models per backend address, and fewer objects to collect)
        self._instances: weakref.WeakValueDictionary[tuple[str, str, str], Instance] = (
            weakref.WeakValueDictionary()
        )
        self._services: dict[str, Service] = {}
        self._table = RoutingTable()
        #: Names whose records changed and whose entries are not derived yet.
        self._dirty: set[str] = set()
        self._pending: _Pending | None = None

    @property
    def dirty(self) -> bool:
        """Some node changed since the last :meth:`publish`."""
        return bool(self._dirty) or self._pending is not None

    # -- nodes --------------------------------------------------------------------------

    def apply(self, path: str, data: bytes | None) -> None:
        """Node ``path`` (relative to the root) now holds ``data``; None: it was removed, with
        everything under it. Only this node's record is parsed."""
        parts = path.strip("/").split("/")
        kind, depth = "/" + parts[0], len(parts)
        if depth == 1:
            if data is None:  # NOTE: a watched root removed: everything under it goes
                for name in list(self._names_of(kind)):
                    self.apply(f"{kind}/{name}", None)
            return
        name = parts[1]
        if kind == layout.MODELS:
            self._apply_model(path, parts, data)
        elif kind == layout.ROUTES:
            self._apply_route(path, parts, data)
        elif kind == layout.SERVICES and depth == 2:
            service = _parse(path, data, Service)
            if service is None:
                self._services.pop(name, None)
            else:
                self._services[name] = service
        else:
            return
        self._dirty.add(name)

    def _names_of(self, kind: str) -> Iterable[str]:
        if kind == layout.MODELS:
            return self._models.keys() | self._versions.keys()
        if kind == layout.ROUTES:
            return self._routes.keys()
        if kind == layout.SERVICES:
            return self._services.keys()
        return ()

    def _apply_model(self, path: str, parts: list[str], data: bytes | None) -> None:
        name = parts[1]
        if len(parts) == 2:
            model = _parse(path, data, Model)
            if model is None:
                self._models.pop(name, None)
            else:
                self._models[name] = model
            if data is None:
                self._versions.pop(name, None)
        elif len(parts) == 3 and parts[2] == "versions":
            if data is None:
                self._versions.pop(name, None)
        elif len(parts) == 4 and parts[2] == "versions" and parts[3].isdigit():
            record = _parse(path, data, ModelVersion)
            versions = self._versions.setdefault(name, {})
            if record is None:
                versions.pop(int(parts[3]), None)
            else:
                versions[int(parts[3])] = tuple(record.labels)
            if not versions:
                del self._versions[name]

    def _apply_route(self, path: str, parts: list[str], data: bytes | None) -> None:
        name = parts[1]
        if len(parts) == 2:
            if data is None:
                self._routes.pop(name, None)
            return
        if not parts[2].isdigit():
            return
        version = int(parts[2])
        versions = self._routes.setdefault(name, {})
        if len(parts) == 3:
            if data is None:
                versions.pop(version, None)
        elif len(parts) == 4:
            route = _parse(path, data, Route)
            routes = versions.setdefault(version, {})
            if route is None:
                routes.pop(parts[3], None)
            else:
                key = (route.address, route.protocol, route.worker_id)
                instance = self._instances.get(key)
                if instance is None:
                    instance = self._instances[key] = Instance(*key)
                routes[parts[3]] = instance
            if not routes:
                del versions[version]
        if not versions:
            del self._routes[name]

    # -- entries ------------------------------------------------------------------------

    def service(self, name: str) -> Service | None:
        return self._services.get(name)

    def entry(self, name: str) -> ModelEntry | None:
        """The entry of ``name`` from its records alone (cost: that model's nodes)."""
        record = self._models.get(name)
        routes = self._routes.get(name, {})
        if record is None and not routes:
            service = self._services.get(name)
            if service is None:
                return None
            urls = tuple(Instance(url, "rest", name) for url in service.urls)
            return ModelEntry(
                name,
                Model(name=name, backend="triton", group=service.group),
                {1: VersionEntry(1, (), urls)},
                {},
                "rest",
            )
        if name in self._services:
            log.warning("service %r has the name of a model; the model wins", name)
        instances = {
            v: tuple(sorted(rs.values(), key=lambda i: (i.worker_id, i.address)))
            for v, rs in sorted(routes.items())
        }
        if record is None:
            # NOTE: routes without a model record (e.g. a worker ahead of the manager) are
            # still routable, with default policy; the backend kind follows the (first) route.
            protocol = next(iter(instances.values()))[0].protocol
            record = Model(name=name, backend="triton" if protocol == "kserve" else "tfserving")
        versions = self._versions.get(name, {})
        ventries: dict[int, VersionEntry] = {}
        labels: dict[str, int] = {}
        for v in sorted(versions.keys() | routes.keys()):
            ventries[v] = VersionEntry(v, versions.get(v, ()), instances.get(v, ()))
            for label in ventries[v].labels:
                labels[label] = v  # NOTE: a label names at most one version; newest wins
        return ModelEntry(name, record, ventries, labels, record.backend)

    def step(self, limit: int) -> bool:
        """Re-derive up to ``limit`` changed names into the next table; True when none is
        left (a burst is derived in slices between which the event loop runs)."""
        pending = self._pending or _Pending(self._table)
        self._pending = pending
        for _ in range(min(limit, len(self._dirty))):
            pending.derive(self._dirty.pop(), self)
        return not self._dirty

    def publish(self, generation: int) -> tuple[RoutingTable, TableChange]:
        """The next table: the previous one with the entries of the changed names
        re-derived, and what changed."""
        self.step(len(self._dirty))
        assert self._pending is not None
        pending, self._pending = self._pending, None
        old = self._table
        self._table = new = RoutingTable(
            pending.models.finish(),
            # NOTE: the same mapping when no service changed (consumers compare identity)
            pending.services.finish() if pending.services_changed else old.services,
            generation,
            pending.addresses.finish(),
        )
        touched = pending.touched
        change = TableChange(
            frozenset(pending.changed),
            frozenset(a for a in touched if a in new.addresses and a not in old.addresses),
            frozenset(a for a in touched if a in old.addresses and a not in new.addresses),
        )
        return new, change


class _Pending:
    """The next table while its changed entries are being derived."""

    def __init__(self, table: RoutingTable) -> None:
        self.models = table.models.mutate()
        self.services = table.services.mutate()
        self.addresses = table.addresses.mutate()
        self.changed: set[str] = set()
        self.services_changed = False
        #: Addresses whose instance count changed.
        self.touched: set[str] = set()

    def derive(self, name: str, state: TableState) -> None:
        service = state.service(name)
        if self.services.get(name) != service:
            self.changed.add(name)
            self.services_changed = True
            if service is None:
                del self.services[name]
            else:
                self.services[name] = service
        before, after = self.models.get(name), state.entry(name)
        if before == after:
            return
        self.changed.add(name)
        for address in before.addresses() if before else ():
            self.addresses[address] -= 1
            if not self.addresses[address]:
                del self.addresses[address]
            self.touched.add(address)
        for address in after.addresses() if after else ():
            self.addresses[address] = self.addresses.get(address, 0) + 1
            self.touched.add(address)
        if after is None:
            del self.models[name]
        else:
            self.models[name] = after


def build_table(nodes: Mapping[str, bytes | None], generation: int = 0) -> RoutingTable:
    """Build a table from ZooKeeper nodes (paths relative to the root, e.g. /models/m)."""
    state = TableState()
    for path, data in nodes.items():
        if data is not None:
            state.apply(path, data)
    return state.publish(generation)[0]


def with_service_health(table: RoutingTable, down: Mapping[str, Mapping[str, str]]) -> RoutingTable:
    """``table`` with each REST service's URLs in ``down`` (service -> URL -> why) moved
    from its ready instances to :attr:`VersionEntry.down` (cost: the services in ``down``)."""
    models = table.models
    for name, urls_down in down.items():
        entry = models.get(name)
        if entry is None or entry.kind != "rest" or not urls_down:
            continue
        urls = entry.versions[1].instances
        models = models.set(
            name,
            replace(
                entry,
                versions={
                    1: VersionEntry(
                        1,
                        (),
                        tuple(i for i in urls if i.address not in urls_down),
                        tuple(i for i in urls if i.address in urls_down),
                    )
                },
            ),
        )
    return replace(table, models=models)
