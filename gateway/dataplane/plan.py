"""Which model versions take the fast path, and the Runtime API commands from one routing
table to the next. Nothing here talks to HAProxy or ZooKeeper.

A model version is served by HAProxy alone when the gateway would add nothing to the call:
no plugin, online, no response cache or shadow, limits HAProxy enforces the same way (see
below), a policy HAProxy balances the same way (round_robin, least_request), and every ready
instance speaking one protocol (the caller's: the map key carries the protocol, so a KServe
call never reaches a TF-Serving instance on the fast path). The fast path serves calls naming
a version; everything else, and anything HAProxy cannot read exactly (see route.lua), goes to
the Python gateway.

``Model.limits`` on the fast path: HAProxy counts a limited model's calls in a stick table
keyed by model name (config.py), per gateway (one HAProxy; no division among the Python
workers). ``max_concurrency`` is exact. ``rate_limit`` is a sliding one-second window (at most
``rate_limit`` calls admitted over the last second), not a token bucket: it holds for a whole
number of calls per second of at least one, with ``burst`` absent or equal to it (one second's
worth, the bucket's default); a model with another rate or burst keeps the Python path, whose
token bucket is exact. The same model's calls that take the Python path (unpinned versions,
labels, streams...) are limited by the Python gateway, on a budget of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from gateway.dataplane.config import POOLS, slot_name
from gateway.table import ModelEntry, RoutingTable
from registry.records import Limits

log = logging.getLogger("gateway.dataplane")

Protocol = Literal["kserve", "tfserving"]
#: (ip, port) of a backend instance as HAProxy connects to it.
Address = tuple[str, int]
RouteId = tuple[Protocol, str, int]

_PREFIX: dict[Protocol, str] = {"kserve": "k", "tfserving": "t"}
SURFACES: dict[Protocol, str] = {"kserve": "kserve", "tfserving": "tfserving"}


@dataclass(frozen=True)
class FastLimits:
    """A model's limits as HAProxy enforces them (None: no such limit)."""

    max_concurrency: int | None = None
    #: Calls admitted over the last second.
    rate_limit: int | None = None


def fast_limits(limits: Limits | None) -> FastLimits | None:
    """``limits`` as HAProxy enforces them; None when it cannot (the Python path's then)."""
    if limits is None:
        return FastLimits()
    rate = limits.rate_limit
    if rate is None:
        return FastLimits(limits.max_concurrency)
    if rate < 1 or rate != int(rate) or limits.burst not in (None, int(rate)):
        return None
    return FastLimits(limits.max_concurrency, int(rate))


@dataclass(frozen=True)
class FastRoute:
    """One model version served on the fast path."""

    protocol: Protocol
    model: str
    version: int
    pool: str
    servers: tuple[Address, ...]
    limits: FastLimits = FastLimits()

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
    ):
        return []
    pool = POOLS.get(record.policy)
    limits = fast_limits(record.limits)
    if pool is None or limits is None:
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
                limits,
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

    def __init__(
        self,
        route_map: str,
        slots: int,
        servers: int,
        *,
        concurrency_map: str = "max_concurrency.map",
        rate_map: str = "rate_limit.map",
    ) -> None:
        self.route_map = route_map
        self.concurrency_map = concurrency_map
        self.rate_map = rate_map
        self.slot_count = slots
        self.server_count = servers
        self.reset()

    def reset(self) -> None:
        self._free = {pool: list(range(self.slot_count - 1, -1, -1)) for pool, _ in POOLS.values()}
        self._slots: dict[RouteId, _Slot] = {}
        self._map: dict[str, str] = {}
        #: Routes already reported as left without a slot (each is reported once).
        self._crowded: set[RouteId] = set()
        #: Routes already reported as having more instances than a slot has servers (once).
        self._overfull: set[RouteId] = set()
        self._by_backend: dict[str, FastRoute] = {}
        #: The route ids with a slot, per model.
        self._by_model: dict[str, set[RouteId]] = {}
        #: The limits in HAProxy's limit maps, per model (only limited models with a slot).
        self._limits: dict[str, FastLimits] = {}

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
            if len(route.servers) <= self.server_count:
                self._overfull.discard(rid)
            elif rid not in self._overfull:
                self._overfull.add(rid)
                log.warning("%s v%d: over %d instances, the rest are off the fast path",
                            route.model, route.version, self.server_count)  # fmt: skip
            for address in route.servers:
                if address in slot.servers:
                    continue
                if not free:
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
        limited, unlimited = self._plan_limits(routes, models)
        for slot in freed:  # NOTE: reusable from the next plan on, once their maint is sent
            self._free[slot.route.pool].append(int(slot.backend.rsplit("_", 1)[1]))
        if crowded:
            shown = ", ".join(f"{r.model} v{r.version}" for r in crowded[:5])
            log.warning("no free slot (%d per pool) for %d more model version(s): they stay "
                        "on the Python path (%s%s)", self.slot_count, len(crowded), shown,
                        ", ..." if len(crowded) > 5 else "")  # fmt: skip
        # NOTE: servers are up, and a model's limits in place, before a key points at them;
        # keys are gone before their limits and servers (in-flight calls on them finish).
        return ready + limited + changes + removed + unlimited + retired

    def _plan_limits(
        self, routes: Mapping[RouteId, FastRoute], models: Collection[str]
    ) -> tuple[list[str], list[str]]:
        """The limit-map commands of ``models``: (entries added or changed, entries deleted)."""
        wanted = {r.model: r.limits for rid, r in routes.items() if rid in self._slots}
        added: list[str] = []
        deleted: list[str] = []
        for name in models:
            old = self._limits.pop(name, FastLimits())
            new = wanted.get(name, FastLimits())
            if new != FastLimits():
                self._limits[name] = new
            for path, was, now in (
                (self.concurrency_map, old.max_concurrency, new.max_concurrency),
                (self.rate_map, old.rate_limit, new.rate_limit),
            ):
                if now is None and was is not None:
                    deleted.append(f"del map {path} {name}")
                elif now is not None and was is None:
                    added.append(f"add map {path} {name} {now}")
                elif now != was:
                    added.append(f"set map {path} {name} {now}")
        return added, deleted

    def _forget(self, rid: RouteId) -> None:
        self._overfull.discard(rid)
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
