"""Which model versions take the fast path, and the Runtime API commands from one routing
table to the next. Nothing here talks to HAProxy or ZooKeeper.

A model version is served by HAProxy alone when the gateway would add nothing to the call:
no plugin, online, no response cache or shadow, limits HAProxy enforces the same way (see
below), and every ready instance speaking one protocol (the caller's: the map key carries the
protocol, so a KServe call never reaches a TF-Serving instance on the fast path). The fast
path serves calls naming a version; everything else, and anything HAProxy cannot read exactly
(see route.lua), goes to the Python gateway. A call naming no version stays on the Python
path, which pins the version it resolves: the backend's own choice (its newest loaded
version) may be one the gateway does not route, and nothing in the routing table can tell.

HAProxy holds one backend per backend *instance* (an address: a Triton or TF-Serving server,
shared by every model it serves), pre-declared as slots (config.py), and one route-map entry
per fast-path key. The entry's value names the model's policy and the version's instances
(``<policy>,<backend>=<address>,...``); route.lua balances over them per call as
the Python router does: round_robin in turn, least_request to the instance with the fewest
calls in flight, sticky by the rendezvous hash of the sticky header (crc32 of
``<key>|<address>``, the Python router's own hash, so a key lands on the same instance on
both paths). So a fleet of any number of models needs as many slots as it has instances.

``Model.limits`` on the fast path: HAProxy counts a limited model's calls in a stick table
keyed by model name (config.py), per gateway (one HAProxy; no division among the Python
workers). ``max_concurrency`` is exact. ``rate_limit`` is a sliding one-second window (at most
``rate_limit`` calls admitted over the last second), not a token bucket: it holds for a whole
number of calls per second of at least one, with ``burst`` absent or equal to it (one second's
worth, the bucket's default); a model with another rate or burst keeps the Python path, whose
token bucket is exact. The same model's calls that take the Python path (labels, streams...)
are limited by the Python gateway, on a budget of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.dataplane.config import instance_backend
from gateway.table import ModelEntry, RoutingTable
from registry.records import Limits, RoutingPolicy

log = logging.getLogger("gateway.dataplane")

Protocol = Literal["kserve", "tfserving"]
#: (ip, port) of a backend instance as HAProxy connects to it.
Address = tuple[str, int]
RouteId = tuple[Protocol, str, int]

_PREFIX: dict[Protocol, str] = {"kserve": "k", "tfserving": "t"}
_PROTOCOLS: dict[str, Protocol] = {prefix: protocol for protocol, prefix in _PREFIX.items()}
SURFACES: dict[Protocol, str] = {"kserve": "kserve", "tfserving": "tfserving"}
#: The policies route.lua balances by, as its route-map values name them.
_POLICIES: dict[RoutingPolicy, str] = {"round_robin": "rr", "least_request": "lc", "sticky": "sh"}


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
    #: The ready instances: the address as routed (the sticky hash's) and as HAProxy
    #: connects to it, ordered as the Python router orders them.
    instances: tuple[tuple[str, Address], ...]
    policy: RoutingPolicy = "round_robin"
    sticky_header: str | None = None
    limits: FastLimits = FastLimits()

    @property
    def id(self) -> RouteId:
        return (self.protocol, self.model, self.version)

    @property
    def key(self) -> str:
        """Route-map key, as route.lua builds it from a request (and logs it for every
        fast-path call)."""
        return f"{_PREFIX[self.protocol]}:{self.model}/{self.version}"

    @property
    def addresses(self) -> tuple[Address, ...]:
        return tuple(dict.fromkeys(address for _, address in self.instances))


def parse_key(key: str) -> RouteId | None:
    """The route a logged key (``k:<model>/<version>``) names; None for anything else."""
    prefix, _, rest = key.partition(":")
    name, _, version = rest.rpartition("/")
    protocol = _PROTOCOLS.get(prefix)
    if protocol is None or not name or not version.isdigit():
        return None
    return (protocol, name, int(version))


def fast_routes(
    table: RoutingTable,
    resolve: Callable[[str], Address | None],
    models: Iterable[str] | None = None,
) -> dict[RouteId, FastRoute]:
    """The fast-path routes of ``models`` in ``table`` (None: of every model), by name (so
    instance slots are handed out in that order); ``resolve`` turns "host:port" into an
    address."""
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
        or (record.policy == "sticky" and not record.sticky_header)
    ):
        return []
    limits = fast_limits(record.limits)
    if limits is None:
        return []
    out = []
    for version, ventry in entry.versions.items():
        protocols = {i.protocol for i in ventry.instances}
        if len(protocols) != 1:
            continue
        protocol = protocols.pop()
        if protocol not in _PREFIX:
            continue
        instances = tuple(
            (i.address, address)
            for i in ventry.instances
            if (address := resolve(i.address)) is not None
        )
        if not instances:
            continue
        out.append(
            FastRoute(
                protocol,
                entry.name,
                version,
                instances,
                record.policy,
                record.sticky_header,
                limits,
            )
        )
    return out


class Programmer:
    """Keeps what HAProxy was told and turns the next set of routes into commands.

    :meth:`plan` assumes its commands are applied; after HAProxy restarts from its base
    configuration, :meth:`reset` forgets everything and the next plan re-creates it all.
    """

    def __init__(
        self,
        route_map: str,
        slots: int,
        *,
        concurrency_map: str = "max_concurrency.map",
        rate_map: str = "rate_limit.map",
    ) -> None:
        self.route_map = route_map
        self.concurrency_map = concurrency_map
        self.rate_map = rate_map
        self.slot_count = slots
        self.reset()

    def reset(self) -> None:
        self._free = list(range(self.slot_count - 1, -1, -1))
        #: The instance slot of each address in use, and back.
        self._slots: dict[Address, int] = {}
        self._addresses: dict[int, Address] = {}
        #: The models whose routes use each address (the slot is freed with the last one).
        self._users: dict[Address, set[str]] = {}
        #: The route-map entries, and the keys and addresses of each model in them.
        self._map: dict[str, str] = {}
        self._keys: dict[str, set[str]] = {}
        self._uses: dict[str, set[Address]] = {}
        #: Versions already reported as left without slots (each is reported once).
        self._crowded: set[RouteId] = set()
        #: The limits in HAProxy's limit maps, per model (only models with a map entry).
        self._limits: dict[str, FastLimits] = {}

    def address_of(self, backend: str) -> Address | None:
        """The instance a slot backend points at now."""
        _, _, index = backend.rpartition("_")
        if not index.isdigit() or backend != instance_backend(int(index)):
            return None
        return self._addresses.get(int(index))

    def plan(
        self, routes: Mapping[RouteId, FastRoute], models: Collection[str] | None = None
    ) -> list[str]:
        """The commands from what HAProxy has to ``routes``, the fast routes of ``models``
        (None: ``routes`` are all of them); the routes of other models stay as they are.
        The cost is that of the named models' routes."""
        by_model: dict[str, list[FastRoute]] = {}
        for route in routes.values():
            by_model.setdefault(route.model, []).append(route)
        if models is None:
            models = sorted(by_model.keys() | self._keys.keys())
        ready: list[str] = []
        retired: list[str] = []
        freed: list[int] = []
        crowded: list[FastRoute] = []
        changes: list[str] = []
        removed: list[str] = []
        for name in models:
            uses: set[Address] = set()
            entries: dict[str, str] = {}
            for route in by_model.get(name, ()):
                # NOTE: a version goes to the fast path with all its instances or not at all
                # (with some, the fast path would balance over part of them)
                addresses = route.addresses
                if sum(a not in self._slots for a in addresses) > len(self._free):
                    if route.id not in self._crowded:
                        self._crowded.add(route.id)
                        crowded.append(route)
                    continue
                self._crowded.discard(route.id)
                uses.update(addresses)
                backends = [
                    f"{instance_backend(self._slot(address, ready))}={routed}"
                    for routed, address in route.instances
                ]
                entries[route.key] = ",".join([self._policy(route), *backends])
            for address in uses - self._uses.get(name, set()):
                self._users.setdefault(address, set()).add(name)
            for address in sorted(self._uses.pop(name, set()) - uses):
                users = self._users[address]
                users.discard(name)
                if not users:
                    del self._users[address]
                    slot = self._slots.pop(address)
                    del self._addresses[slot]
                    retired.append(f"set server {instance_backend(slot)}/s state maint")
                    freed.append(slot)
            for key in sorted(self._keys.pop(name, set()) - entries.keys()):
                removed.append(f"del map {self.route_map} {key}")
                del self._map[key]
            for key, value in entries.items():
                was = self._map.get(key)
                if was != value:
                    verb = "add" if was is None else "set"
                    changes.append(f"{verb} map {self.route_map} {key} {value}")
                    self._map[key] = value
            if entries:
                self._keys[name] = set(entries)
            if uses:
                self._uses[name] = uses
        # NOTE: slots whose maintenance is in this plan are reusable from the next one on
        self._free.extend(freed)
        limited, unlimited = self._plan_limits(by_model, models)
        if crowded:
            shown = ", ".join(f"{r.model} v{r.version}" for r in crowded[:5])
            log.warning("no free instance slot (%d in all) for the instances of %d more model "
                        "version(s): they stay on the Python path (%s%s)", self.slot_count,
                        len(crowded), shown, ", ..." if len(crowded) > 5 else "")  # fmt: skip
        # NOTE: servers are up, and a model's limits in place, before a key points at them;
        # keys are gone before their limits and servers (in-flight calls on them finish).
        return ready + limited + changes + removed + unlimited + retired

    def _slot(self, address: Address, ready: list[str]) -> int:
        """The instance slot of ``address``, taken (with its commands) when it has none."""
        slot = self._slots.get(address)
        if slot is not None:
            return slot
        slot = self._slots[address] = self._free.pop()
        self._addresses[slot] = address
        server = f"set server {instance_backend(slot)}/s"
        ip, port = address
        ready += [f"{server} addr {ip} port {port}", f"{server} state ready", f"{server} health up"]
        return slot

    @staticmethod
    def _policy(route: FastRoute) -> str:
        policy = _POLICIES[route.policy]
        return f"{policy}={route.sticky_header}" if route.policy == "sticky" else policy

    def _plan_limits(
        self, by_model: Mapping[str, list[FastRoute]], models: Collection[str]
    ) -> tuple[list[str], list[str]]:
        """The limit-map commands of ``models``: (entries added or changed, entries deleted)."""
        added: list[str] = []
        deleted: list[str] = []
        for name in models:
            old = self._limits.pop(name, FastLimits())
            routes = by_model.get(name)
            new = routes[0].limits if routes and name in self._keys else FastLimits()
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
