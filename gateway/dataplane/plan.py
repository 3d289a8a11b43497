"""Which model versions take the fast path, and the Runtime API commands from one routing
table to the next. Nothing here talks to HAProxy or ZooKeeper.

A model version is served by HAProxy alone when the gateway would add nothing to the call:
no plugin, online, no response cache, shadow or limits (``Model.limits``: the Python gateway
enforces them; HAProxy's own limits are a later step), a policy HAProxy balances the same way
(round_robin, least_request), and every ready instance speaking one protocol (the caller's:
the map key carries the protocol, so a KServe call never reaches a TF-Serving instance on the
fast path). The fast path serves calls naming a version; everything else, and anything HAProxy
cannot read exactly (see route.lua), goes to the Python gateway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from gateway.dataplane.config import POOLS, slot_name
from gateway.table import ModelEntry, RoutingTable

log = logging.getLogger("gateway.dataplane")

Protocol = Literal["kserve", "tfserving"]
#: (ip, port) of a backend instance as HAProxy connects to it.
Address = tuple[str, int]
RouteId = tuple[Protocol, str, int]

_PREFIX: dict[Protocol, str] = {"kserve": "k", "tfserving": "t"}
SURFACES: dict[Protocol, str] = {"kserve": "kserve", "tfserving": "tfserving"}


@dataclass(frozen=True)
class FastRoute:
    """One model version served on the fast path."""

    protocol: Protocol
    model: str
    version: int
    pool: str
    servers: tuple[Address, ...]

    @property
    def id(self) -> RouteId:
        return (self.protocol, self.model, self.version)

    @property
    def key(self) -> str:
        """Route-map key, as route.lua builds it from a request."""
        return f"{_PREFIX[self.protocol]}:{self.model}/{self.version}"


def fast_routes(
    table: RoutingTable,
    resolve: Callable[[str], Address | None],
    models: Iterable[str] | None = None,
) -> dict[RouteId, FastRoute]:
    """The fast-path routes of ``models`` in ``table`` (None: of every model), by name (so
    slots are handed out in that order); ``resolve`` turns "host:port" into an address."""
    routes: dict[RouteId, FastRoute] = {}
    for name in sorted(table.models if models is None else models):
        entry = table.models.get(name)
        for route in _model_routes(entry, resolve) if entry is not None else ():
            routes[route.id] = route
    return routes


def _model_routes(entry: ModelEntry, resolve: Callable[[str], Address | None]) -> list[FastRoute]:
    record = entry.record
    if (
        entry.kind == "rest"
        or record.plugin
        or record.state != "online"
        or record.cache
        or record.shadow
        or record.limits
    ):
        return []
    pool = POOLS.get(record.policy)
    if pool is None:
        return []
    out = []
    for version, ventry in entry.versions.items():
        protocols = {i.protocol for i in ventry.instances}
        if len(protocols) != 1:
            continue
        protocol = protocols.pop()
        if protocol not in _PREFIX:
            continue
        servers = tuple(a for a in (resolve(i.address) for i in ventry.instances) if a)
        if not servers:
            continue
        out.append(
            FastRoute(
                protocol,
                entry.name,
                version,
                pool[0],
                tuple(sorted(set(servers))),
            )
        )
    return out


@dataclass
class _Slot:
    backend: str
    route: FastRoute
    #: Server number (1-based, as server-template names them) per address.
    servers: dict[Address, int] = field(default_factory=dict)


class Programmer:
    """Keeps what HAProxy was told and turns the next set of routes into commands.

    :meth:`plan` assumes its commands are applied; after HAProxy restarts from its base
    configuration, :meth:`reset` forgets everything and the next plan re-creates it all.
    """

    def __init__(self, route_map: str, slots: int, servers: int) -> None:
        self.route_map = route_map
        self.slot_count = slots
        self.server_count = servers
        self.reset()

    def reset(self) -> None:
        self._free = {pool: list(range(self.slot_count - 1, -1, -1)) for pool, _ in POOLS.values()}
        self._slots: dict[RouteId, _Slot] = {}
        self._map: dict[str, str] = {}
        #: Routes already reported as left without a slot (each is reported once).
        self._crowded: set[RouteId] = set()
        self._by_backend: dict[str, FastRoute] = {}
        #: The route ids with a slot, per model.
        self._by_model: dict[str, set[RouteId]] = {}

    def route_of(self, backend: str) -> FastRoute | None:
        """The route a slot backend serves now (for metrics)."""
        return self._by_backend.get(backend)

    def address_of(self, backend: str, server: str) -> Address | None:
        """The instance a slot server points at now."""
        route = self._by_backend.get(backend)
        slot = None if route is None else self._slots.get(route.id)
        if slot is None:
            return None
        return next((a for a, n in slot.servers.items() if f"s{n}" == server), None)

    def plan(
        self, routes: Mapping[RouteId, FastRoute], models: Collection[str] | None = None
    ) -> list[str]:
        """The commands from what HAProxy has to ``routes``, the fast routes of ``models``
        (None: ``routes`` are all of them); the routes of other models stay as they are.
        The cost is that of the named models' routes."""
        if models is None:
            models = {route.model for route in routes.values()} | self._by_model.keys()
        ready: list[str] = []
        retired: list[str] = []
        freed: list[_Slot] = []
        keys: dict[str, RouteId] = {}
        crowded: list[FastRoute] = []
        for name in models:
            for rid in [
                r
                for r in self._by_model.get(name, ())
                if _moved(self._slots[r].route, routes.get(r))
            ]:
                old = self._slots.pop(rid)
                self._forget(rid)
                retired += [self._server(old, n, "state maint") for n in old.servers.values()]
                del self._by_backend[old.backend]
                freed.append(old)
                keys[old.route.key] = rid
        for rid, route in routes.items():
            slot = self._slots.get(rid)
            if slot is None:
                if not self._free[route.pool]:
                    if rid not in self._crowded:
                        self._crowded.add(rid)
                        crowded.append(route)
                    continue
                self._crowded.discard(rid)
                slot = _Slot(slot_name(route.pool, self._free[route.pool].pop()), route)
                self._slots[rid] = slot
                self._by_model.setdefault(route.model, set()).add(rid)
            elif slot.route == route:
                continue
            slot.route = route
            self._by_backend[slot.backend] = route
            keys[route.key] = rid
            wanted = set(route.servers)
            for address in [a for a in slot.servers if a not in wanted]:
                retired.append(self._server(slot, slot.servers.pop(address), "state maint"))
            used = set(slot.servers.values())
            free = [n for n in range(1, self.server_count + 1) if n not in used]
            for address in route.servers:
                if address in slot.servers:
                    continue
                if not free:
                    log.warning("%s v%d: over %d instances, the rest are off the fast path",
                                route.model, route.version, self.server_count)  # fmt: skip
                    break
                n = slot.servers[address] = free.pop(0)
                ip, port = address
                ready += [
                    self._server(slot, n, f"addr {ip} port {port}"),
                    self._server(slot, n, "state ready"),
                    self._server(slot, n, "health up"),
                ]
        changes, removed = [], []
        for key, rid in keys.items():
            slot = self._slots.get(rid)
            was = self._map.get(key)
            if slot is None:
                if was is not None:
                    removed.append(f"del map {self.route_map} {key}")
                    del self._map[key]
            elif was is None:
                changes.append(f"add map {self.route_map} {key} {slot.backend}")
            elif was != slot.backend:
                changes.append(f"set map {self.route_map} {key} {slot.backend}")
            if slot is not None:
                self._map[key] = slot.backend
        for slot in freed:  # NOTE: reusable from the next plan on, once their maint is sent
            self._free[slot.route.pool].append(int(slot.backend.rsplit("_", 1)[1]))
        if crowded:
            shown = ", ".join(f"{r.model} v{r.version}" for r in crowded[:5])
            log.warning("no free slot (%d per pool) for %d more model version(s): they stay "
                        "on the Python path (%s%s)", self.slot_count, len(crowded), shown,
                        ", ..." if len(crowded) > 5 else "")  # fmt: skip
        # NOTE: servers are up before a key points at them; keys are gone before their
        # servers go into maintenance (in-flight calls on them finish).
        return ready + changes + removed + retired

    def _forget(self, rid: RouteId) -> None:
        rids = self._by_model[rid[1]]
        rids.discard(rid)
        if not rids:
            del self._by_model[rid[1]]

    @staticmethod
    def _server(slot: _Slot, n: int, what: str) -> str:
        return f"set server {slot.backend}/s{n} {what}"


def _moved(old: FastRoute, new: FastRoute | None) -> bool:
    """The route leaves its slot: gone, or now balanced by another pool."""
    return new is None or new.pool != old.pool
