"""Which model versions take the fast path, and the Runtime API commands from one routing
table to the next. Nothing here talks to HAProxy or ZooKeeper.

A model version is served by HAProxy alone when the gateway would add nothing to the call:
no plugin, online, a policy HAProxy balances the same way (round_robin, least_request), and
every ready instance speaking one protocol (the caller's: the map key carries the protocol, so
a KServe call never reaches a TF-Serving instance on the fast path). The fast path serves
calls naming a version; everything else, and anything HAProxy cannot read exactly (see
route.lua), goes to the Python gateway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
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
    table: RoutingTable, resolve: Callable[[str], Address | None]
) -> dict[RouteId, FastRoute]:
    """The fast-path routes of ``table``; ``resolve`` turns "host:port" into an address."""
    routes: dict[RouteId, FastRoute] = {}
    for entry in table.models.values():
        for route in _model_routes(entry, resolve):
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
        self._by_backend: dict[str, FastRoute] = {}

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

    def plan(self, routes: Mapping[RouteId, FastRoute]) -> list[str]:
        ready: list[str] = []
        retired: list[str] = []
        freed: list[_Slot] = []
        for rid in [r for r, s in self._slots.items() if _moved(s.route, routes.get(r))]:
            old = self._slots.pop(rid)
            retired += [self._server(old, n, "state maint") for n in old.servers.values()]
            del self._by_backend[old.backend]
            freed.append(old)
        for rid, route in routes.items():
            slot = self._slots.get(rid)
            if slot is None:
                if not self._free[route.pool]:
                    log.warning("no free %s slot: %s v%d stays on the Python path",
                                route.pool, route.model, route.version)  # fmt: skip
                    continue
                slot = _Slot(slot_name(route.pool, self._free[route.pool].pop()), route)
                self._slots[rid] = slot
            elif slot.route == route:
                continue
            slot.route = route
            self._by_backend[slot.backend] = route
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
        wanted_map = {slot.route.key: slot.backend for slot in self._slots.values()}
        changes = []
        for key, backend in wanted_map.items():
            was = self._map.get(key)
            if was is None:
                changes.append(f"add map {self.route_map} {key} {backend}")
            elif was != backend:
                changes.append(f"set map {self.route_map} {key} {backend}")
        changes += [f"del map {self.route_map} {key}" for key in self._map if key not in wanted_map]
        self._map = wanted_map
        for slot in freed:  # NOTE: reusable from the next plan on, once their maint is sent
            self._free[slot.route.pool].append(int(slot.backend.rsplit("_", 1)[1]))
        # NOTE: servers are up before a key points at them; keys are gone before their
        # servers go into maintenance (in-flight calls on them finish).
        return ready + changes + retired

    @staticmethod
    def _server(slot: _Slot, n: int, what: str) -> str:
        return f"set server {slot.backend}/s{n} {what}"


def _moved(old: FastRoute, new: FastRoute | None) -> bool:
    """The route leaves its slot: gone, or now balanced by another pool."""
    return new is None or new.pool != old.pool
