"""The routing core: version choice, instance policies, failover and outlier ejection.

No gRPC server code here: surfaces hand the router a model name (+ version or label) and an
``attempt`` coroutine that calls one instance; the router chooses, retries and accounts.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.errors import (
    ConnectionFailure,
    DeadlineExceededError,
    ModelNotFoundError,
    ModelUnavailableError,
)
from gateway.metrics import GatewayMetrics
from gateway.table import Instance, ModelEntry, RoutingTable, TableChange, VersionEntry
from registry.records import Service

log = logging.getLogger("gateway.router")

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """The model version a call goes to. ``pinned``: the caller named the version."""

    model: ModelEntry
    version: VersionEntry
    pinned: bool


@dataclass
class AddressState:
    """Passive health of one backend address, shared by every model it serves."""

    in_flight: int = 0
    failures: int = 0
    ejected_until: float = 0.0
    ejections: int = 0


@dataclass
class _SmoothWRR:
    """nginx's smooth weighted round robin: exact shares, evenly interleaved."""

    weights: tuple[tuple[int, int], ...]
    current: dict[int, int] = field(default_factory=dict)

    def next(self) -> int:
        total = 0
        best: int | None = None
        for key, weight in self.weights:
            self.current[key] = self.current.get(key, 0) + weight
            total += weight
            if best is None or self.current[key] > self.current[best]:
                best = key
        assert best is not None
        self.current[best] -= total
        return best


class Router:
    """Chooses a version and an instance per call and runs the call with failover."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        max_attempts: int = 3,
        eject_after: int = 3,
        eject_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.eject_after = eject_after
        self.eject_seconds = eject_seconds
        self.clock = clock
        self.rng = rng or random.Random()
        self.table = RoutingTable()
        self.addresses: dict[str, AddressState] = {}
        self._rr: dict[tuple[str, int], Iterator[int]] = {}
        self._wrr: dict[str, _SmoothWRR] = {}
        #: Addresses no model routes to, whose state is dropped once no call is in flight.
        self._unused: set[str] = set()

    # -- table --------------------------------------------------------------------------

    def set_table(self, table: RoutingTable, change: TableChange | None = None) -> None:
        """Swap in a new table (one assignment: calls see the old or the new one whole).

        ``change`` says what differs from the current table (None: anything may); the cost
        is that of the change: the state of each address no model routes to any more is
        dropped (once no call is in flight on it), and that of each model that is gone.
        """
        old, self.table = self.table, table
        change = change or TableChange.between(old, table)
        for name in change.models:
            if name not in table.models and (entry := old.models.get(name)) is not None:
                self._wrr.pop(name, None)
                for version in entry.versions:
                    self._rr.pop((name, version), None)
        self._unused -= change.added
        self._unused |= change.removed
        for address in list(self._unused):
            state = self.addresses.get(address)
            if state is None or state.in_flight == 0:
                self.addresses.pop(address, None)
                self._unused.discard(address)

    # -- version choice -----------------------------------------------------------------

    def model(self, name: str) -> ModelEntry:
        entry = self.table.models.get(name)
        if entry is None:
            raise ModelNotFoundError(
                f"model {name!r} is not known to the gateway; ListModels or RepositoryIndex "
                "lists the routable models"
            )
        return entry

    def service(self, name: str) -> Service | None:
        return self.table.services.get(name)

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Target:
        """The version a call goes to: explicit, by label, else by the model's weights."""
        entry = self.model(name)
        if entry.record.state == "offline":
            raise ModelUnavailableError(f"model {name!r} is offline (take it online first)")
        if version is None and label:
            if label.isdigit():
                version = int(label)
            elif label not in entry.labels:
                known = ", ".join(sorted(entry.labels)) or "none"
                raise ModelNotFoundError(
                    f"model {name!r} has no version labelled {label!r} (labels: {known})"
                )
            else:
                version = entry.labels[label]
        if version is not None:
            ventry = entry.versions.get(version)
            if ventry is None:
                known = ", ".join(str(v) for v in entry.versions) or "none"
                raise ModelNotFoundError(
                    f"model {name!r} has no version {version} (versions: {known})"
                )
            if not ventry.instances and not ventry.down:
                raise ModelUnavailableError(
                    f"model {name!r} version {version} has no ready instance"
                )
            return Target(entry, ventry, pinned=True)
        # NOTE: a REST service whose URLs all fail the probe is still called (as every
        # ejected backend is): the probe may lag, and the caller gets the service's own error
        weights = entry.weights() or {v: 1 for v, e in entry.versions.items() if e.down}
        if not weights:
            raise ModelUnavailableError(f"model {name!r} has no ready instance")
        if len(weights) == 1:
            chosen = next(iter(weights))
        else:
            key = tuple(sorted(weights.items()))
            wrr = self._wrr.get(name)
            if wrr is None or wrr.weights != key:
                wrr = self._wrr[name] = _SmoothWRR(key)
            chosen = wrr.next()
        return Target(entry, entry.versions[chosen], pinned=False)

    # -- instance choice ----------------------------------------------------------------

    def _state(self, address: str) -> AddressState:
        state = self.addresses.get(address)
        if state is None:
            state = self.addresses[address] = AddressState()
        return state

    def ejected(self, address: str) -> bool:
        state = self.addresses.get(address)
        return state is not None and state.ejected_until > self.clock()

    def pick(
        self, target: Target, exclude: set[str] | frozenset[str] = frozenset(), key: str = ""
    ) -> Instance | None:
        """One instance of ``target`` by the model's policy, skipping ``exclude``.

        Ejected instances are skipped unless every remaining one is ejected; the URLs of a
        REST service that fail its probe (``down``) come after those.
        """
        ready = [i for i in target.version.instances if i.address not in exclude]
        pool = [i for i in ready if not self.ejected(i.address)] or ready
        if not pool:
            pool = [i for i in target.version.down if i.address not in exclude]
        if not pool:
            return None
        if len(pool) == 1:
            return pool[0]
        policy = target.model.record.policy
        if policy == "sticky" and key:
            return max(pool, key=lambda i: zlib.crc32(f"{key}|{i.address}".encode()))
        if policy == "least_request":
            a, b = self.rng.sample(pool, 2)
            return a if self._state(a.address).in_flight <= self._state(b.address).in_flight else b
        rr_key = (target.model.name, target.version.version)
        counter = self._rr.get(rr_key)
        if counter is None:
            counter = self._rr[rr_key] = itertools.count()
        return pool[next(counter) % len(pool)]

    # -- calls --------------------------------------------------------------------------

    async def call(
        self,
        target: Target,
        attempt: Callable[[Instance, float], Awaitable[T]],
        *,
        deadline: float,
        key: str = "",
    ) -> T:
        """Run ``attempt(instance, timeout)``; on a connection failure try another instance.

        At most ``max_attempts`` instances, all within ``deadline`` (a ``clock()`` value).
        Application errors and deadline errors are raised at once, never retried.
        """
        if target.model.record.policy == "sticky" and not key:
            self.metrics.sticky_without_key.labels(target.model.name).inc()
        tried: set[str] = set()
        last: ConnectionFailure | None = None
        for n in range(self.max_attempts):
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise DeadlineExceededError(
                    f"deadline exceeded before model {target.model.name!r} answered"
                    + (f" (after {n} failed attempt(s))" if n else "")
                )
            instance = self.pick(target, tried, key)
            if instance is None:
                break
            if n:
                self.metrics.retries.labels(target.model.name).inc()
            tried.add(instance.address)
            state = self._state(instance.address)
            state.in_flight += 1
            try:
                result = await attempt(instance, remaining)
            except ConnectionFailure as err:
                last = err
                self._failed(instance.address, state)
                continue
            finally:
                state.in_flight -= 1
            if state.failures or state.ejections:
                state.failures = 0
                state.ejections = 0
            return result
        detail = f"; last error: {last}" if last else ""
        raise ModelUnavailableError(
            f"model {target.model.name!r} version {target.version.version}: no instance "
            f"answered after {len(tried)} attempt(s){detail}"
        )

    def eject(self, address: str) -> None:
        """Eject ``address`` now: it was found dead elsewhere (HAProxy, on the fast path)."""
        state = self._state(address)
        if state.ejected_until <= self.clock():
            state.failures = self.eject_after - 1
            self._failed(address, state)

    def _failed(self, address: str, state: AddressState) -> None:
        state.failures += 1
        if state.failures >= self.eject_after and state.ejected_until <= self.clock():
            period = self.eject_seconds * min(2**state.ejections, 8)
            state.ejected_until = self.clock() + period
            state.ejections += 1
            state.failures = 0
            self.metrics.ejections.labels(address).inc()
            log.warning("ejected backend %s for %.1fs after connection failures", address, period)
