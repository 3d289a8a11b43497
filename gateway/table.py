"""The routing table: an immutable snapshot of what ZooKeeper says, swapped atomically.

:func:`build_table` turns the raw nodes of ``/models``, ``/routes`` and ``/services`` (path
relative to the registry root -> data) into a :class:`RoutingTable`. Nothing here talks to
ZooKeeper or gRPC.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from registry import layout
from registry.errors import InvalidRecordError
from registry.records import Model, ModelVersion, Record, Route, RouteProtocol, Service

log = logging.getLogger("gateway.table")


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
    models: Mapping[str, ModelEntry] = field(default_factory=dict)
    services: Mapping[str, Service] = field(default_factory=dict)
    generation: int = 0

    def describe(self) -> dict[str, int]:
        """Ready instances per model (for metrics and logs)."""
        return {name: entry.ready_instances for name, entry in self.models.items()}


def _parse(path: str, data: bytes | None, record_type: type[Record], into: dict) -> None:
    if not data:
        return
    try:
        into[path] = record_type.from_bytes(path, data)
    except InvalidRecordError as err:
        log.warning("ignoring %s", err)


def build_table(nodes: Mapping[str, bytes | None], generation: int = 0) -> RoutingTable:
    """Build a table from ZooKeeper nodes (paths relative to the root, e.g. /models/m)."""
    models: dict[str, Model] = {}
    versions: dict[tuple[str, int], ModelVersion] = {}
    routes: dict[tuple[str, int], list[Route]] = {}
    services: dict[str, Service] = {}
    for path, data in nodes.items():
        parts = path.strip("/").split("/")
        parsed: dict[str, object] = {}
        if parts[0] == layout.MODELS[1:] and len(parts) == 2:
            _parse(path, data, Model, parsed)
            if path in parsed:
                models[parts[1]] = parsed[path]  # type: ignore[assignment]
        elif parts[0] == layout.MODELS[1:] and len(parts) == 4 and parts[2] == "versions":
            _parse(path, data, ModelVersion, parsed)
            if path in parsed and parts[3].isdigit():
                versions[(parts[1], int(parts[3]))] = parsed[path]  # type: ignore[assignment]
        elif parts[0] == layout.ROUTES[1:] and len(parts) == 4 and parts[2].isdigit():
            _parse(path, data, Route, parsed)
            if path in parsed:
                routes.setdefault((parts[1], int(parts[2])), []).append(parsed[path])  # type: ignore[arg-type]
        elif parts[0] == layout.SERVICES[1:] and len(parts) == 2:
            _parse(path, data, Service, parsed)
            if path in parsed:
                services[parts[1]] = parsed[path]  # type: ignore[assignment]

    names = set(models) | {m for m, _ in routes}
    entries: dict[str, ModelEntry] = {}
    for name in sorted(names):
        record = models.get(name)
        if record is None:
            # NOTE: routes without a model record (e.g. a worker ahead of the manager) are
            # still routable, with default policy; the backend kind follows the route.
            protocol = next(r.protocol for (m, _), rs in routes.items() if m == name for r in rs)
            record = Model(name=name, backend="triton" if protocol == "kserve" else "tfserving")
        nums = {v for m, v in versions if m == name} | {v for m, v in routes if m == name}
        ventries: dict[int, VersionEntry] = {}
        labels: dict[str, int] = {}
        for v in sorted(nums):
            vrec = versions.get((name, v))
            rs = sorted(routes.get((name, v), []), key=lambda r: (r.worker_id, r.address))
            ventries[v] = VersionEntry(
                version=v,
                labels=tuple(vrec.labels) if vrec else (),
                instances=tuple(Instance(r.address, r.protocol, r.worker_id) for r in rs),
            )
            for label in ventries[v].labels:
                labels[label] = v  # NOTE: a label names at most one version; newest wins
        entries[name] = ModelEntry(name, record, ventries, labels, record.backend)
    for name, service in services.items():
        if name in entries:
            log.warning("service %r has the name of a model; the model wins", name)
            continue
        urls = tuple(Instance(url, "rest", name) for url in service.urls)
        entries[name] = ModelEntry(
            name,
            Model(name=name, backend="triton", group=service.group),
            {1: VersionEntry(1, (), urls)},
            {},
            "rest",
        )
    return RoutingTable(entries, services, generation)


def with_service_health(table: RoutingTable, down: Mapping[str, Mapping[str, str]]) -> RoutingTable:
    """``table`` with each REST service's URLs in ``down`` (service -> URL -> why) moved
    from its ready instances to :attr:`VersionEntry.down`."""
    models = dict(table.models)
    for name in table.services:
        entry = models.get(name)
        if entry is None or entry.kind != "rest" or not down.get(name):
            continue
        urls = entry.versions[1].instances
        models[name] = replace(
            entry,
            versions={
                1: VersionEntry(
                    1,
                    (),
                    tuple(i for i in urls if i.address not in down[name]),
                    tuple(i for i in urls if i.address in down[name]),
                )
            },
        )
    return replace(table, models=models)
