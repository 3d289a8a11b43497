"""Per-model isolation: a cap on calls in flight and a token-bucket rate limit
(``Model.limits``), checked before a call costs anything (no plugin, no backend).

Limits are per gateway, divided among its Python processes (``--python-workers``): HAProxy
spreads calls over them, so each enforces its share, as Envoy's local rate limit is enforced
per instance. A share is never below one call in flight, and the bucket never holds less than
one token. A call over a limit gets RESOURCE_EXHAUSTED naming the model and the limit, with
``grpc-retry-pushback-ms`` in its trailers (when a token is free again; a short wait for a
concurrency slot). Nothing here talks to gRPC or ZooKeeper.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping

from gateway.errors import ResourceExhaustedError
from gateway.metrics import GatewayMetrics
from gateway.table import ModelEntry
from registry.records import Limits

#: Trailer telling a gRPC client when to retry (gRFC A6).
PUSHBACK = "grpc-retry-pushback-ms"
#: Pushback of a call over a model's max_concurrency: a slot frees when any call ends.
CONCURRENCY_PUSHBACK_MS = 10


def over_concurrency(
    model: str, in_flight: object, max_concurrency: object, share: str = ""
) -> str:
    """The message of a call over ``model``'s max_concurrency (HAProxy's too: config.py)."""
    return (
        f"model {model!r}: {in_flight} calls in flight, its max_concurrency of "
        f"{max_concurrency}{share}"
    )


def over_rate(model: str, rate_limit: object, share: str = "") -> str:
    """The message of a call over ``model``'s rate_limit (HAProxy's too: config.py)."""
    return f"model {model!r}: over its rate_limit of {rate_limit} calls/s{share}"


class LimitedError(ResourceExhaustedError):
    """A call over one of its model's limits (``limit``: ``concurrency`` or ``rate``)."""

    def __init__(self, message: str, limit: str, pushback_ms: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.pushback_ms = pushback_ms

    @property
    def trailers(self) -> tuple[tuple[str, str], ...]:
        return ((PUSHBACK, str(self.pushback_ms)),)


class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` kept; a call takes one."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def reshape(self, rate: float, capacity: float, now: float) -> None:
        """New rate and capacity; the tokens held are kept (up to the new capacity)."""
        self._refill(now)
        self.rate, self.capacity = rate, capacity
        self.tokens = min(self.tokens, capacity)

    def take(self, now: float) -> float:
        """Take a token: 0.0, or the seconds until one is free (none taken)."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now


class ModelLimit:
    """One model's limits in this process, and its calls in flight (a held slot each)."""

    def __init__(self, name: str, spec: Limits, processes: int, now: float) -> None:
        self.name = name
        self.processes = processes
        self.in_flight = 0
        self.spec = spec
        self.max_in_flight: int | None = None
        self.bucket: TokenBucket | None = None
        self.reshape(spec, now)

    def reshape(self, spec: Limits, now: float) -> None:
        """Take ``spec`` (the model record changed); calls in flight and tokens are kept."""
        self.spec = spec
        n = self.processes
        self.max_in_flight = (
            None if spec.max_concurrency is None else max(1, spec.max_concurrency // n)
        )
        if spec.rate_limit is None:
            self.bucket = None
            return
        rate = spec.rate_limit / n
        capacity = max(1.0, (spec.burst or spec.rate_limit) / n)
        if self.bucket is None:
            self.bucket = TokenBucket(rate, capacity, now)
        else:
            self.bucket.reshape(rate, capacity, now)

    def release(self) -> None:
        self.in_flight -= 1

    def share(self, share: float, unit: str) -> str:
        """This process's share of a limit, as callers read it ("" in a gateway of one)."""
        if self.processes == 1:
            return ""
        return f" ({share:g}{unit} in each of the gateway's {self.processes} processes)"


class ModelLimits:
    """The limits of every limited model in this process, kept in step with the table."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        processes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.processes = processes
        self.clock = clock
        self._models: dict[str, ModelLimit] = {}

    def sync(self, models: Mapping[str, ModelEntry], changed: Iterable[str]) -> None:
        """Follow the records of the ``changed`` models (the cost is that of the change)."""
        now = self.clock()
        for name in changed:
            entry = models.get(name)
            spec = None if entry is None else entry.record.limits
            limit = self._models.get(name)
            if spec is None:
                self._models.pop(name, None)
            elif limit is None:
                self._models[name] = ModelLimit(name, spec, self.processes, now)
            elif limit.spec != spec:
                limit.reshape(spec, now)

    def admit(self, entry: ModelEntry) -> ModelLimit | None:
        """Let a call of ``entry`` in or raise :class:`LimitedError`. The model's limit when
        the call holds one of its concurrency slots (release it when the call ends)."""
        # NOTE: synced before the router sees the table, so a limited model has its state
        limit = self._models[entry.name]
        spec = limit.spec
        if limit.max_in_flight is not None and limit.in_flight >= limit.max_in_flight:
            self.metrics.limited.labels(entry.name, "concurrency").inc()
            assert spec.max_concurrency is not None
            raise LimitedError(
                over_concurrency(
                    entry.name,
                    limit.in_flight,
                    spec.max_concurrency,
                    limit.share(limit.max_in_flight, ""),
                ),
                "concurrency",
                CONCURRENCY_PUSHBACK_MS,
            )
        if limit.bucket is not None:
            wait_s = limit.bucket.take(self.clock())
            if wait_s:
                self.metrics.limited.labels(entry.name, "rate").inc()
                assert spec.rate_limit is not None
                raise LimitedError(
                    over_rate(
                        entry.name,
                        f"{spec.rate_limit:g}",
                        limit.share(limit.bucket.rate, " calls/s"),
                    ),
                    "rate",
                    max(1, math.ceil(wait_s * 1000)),
                )
        if limit.max_in_flight is None:
            return None
        limit.in_flight += 1
        return limit
