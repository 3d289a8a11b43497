"""Per-model load as the gateways see it: calls/s, error rate and p50/p99 latency over the
last minutes.

:class:`LoadTracker` scrapes every registered gateway's Prometheus ``/metrics`` (the
``metrics_address`` of its ``/gateways`` record) every ``interval_s`` seconds, turns the
counter and histogram-bucket deltas between two scrapes of one gateway into one sample per
model, sums the gateways, and keeps a ring of the last ``keep`` samples per model.
``LoadTracker.models()`` is the one way to read it (the console, ``GET /v1/load`` and, later,
autoscaling).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from registry import Registry, layout
from registry.records import Gateway

log = logging.getLogger("manager_api.load")

#: The gateway metrics read (gateway/metrics.py): calls by code, and the end-to-end latency.
CALLS = "modelgate_gateway_requests"
LATENCY = "modelgate_gateway_latency_seconds"
LATENCY_STAGE = "total"


class LoadSample(BaseModel):
    """One model's load over one scrape interval, summed over the gateways."""

    time: float = Field(description="End of the interval (Unix seconds).")
    calls_per_s: float = Field(description="Calls answered per second.")
    error_rate: float = Field(description="Share of those calls answered with a code not OK.")
    p50_s: float | None = Field(description="Median end-to-end latency; None without calls.")
    p99_s: float | None = Field(description="99th percentile latency; None without calls.")


class ModelLoad(BaseModel):
    """The recent samples of one model, oldest first."""

    model: str
    samples: list[LoadSample]


@dataclass
class Counters:
    """The cumulative figures one scrape of one gateway read, per model."""

    time: float
    calls: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    #: Per model: upper bound (``le``) -> cumulative count, summed over surfaces.
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)


def parse_counters(text: str, at: float) -> Counters:
    """The per-model calls, errors and latency buckets of a gateway's ``/metrics`` text."""
    out = Counters(time=at)
    for family in text_string_to_metric_families(text):
        if family.name == CALLS:
            for s in family.samples:
                if not s.name.endswith("_total"):
                    continue
                model = s.labels["model"]
                out.calls[model] = out.calls.get(model, 0.0) + s.value
                if s.labels["code"] != "OK":
                    out.errors[model] = out.errors.get(model, 0.0) + s.value
        elif family.name == LATENCY:
            for s in family.samples:
                if not s.name.endswith("_bucket") or s.labels["stage"] != LATENCY_STAGE:
                    continue
                per_model = out.buckets.setdefault(s.labels["model"], {})
                le = float(s.labels["le"])
                per_model[le] = per_model.get(le, 0.0) + s.value
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """``q`` (0 to 1) of a cumulative histogram, interpolated within its bucket as Prometheus'
    ``histogram_quantile`` does; None when it holds no observation."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower  # NOTE: in the +Inf bucket: the largest finite bound is all we know
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _delta(new: float, old: float) -> float:
    """Increase of a counter; a decrease means the gateway restarted (counted from zero)."""
    return new - old if new >= old else new


@dataclass
class _Interval:
    """Deltas of one model over one interval, accumulated over the gateways."""

    calls_per_s: float = 0.0
    calls: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def add(self, model: str, new: Counters, old: Counters) -> None:
        seconds = new.time - old.time
        calls = _delta(new.calls.get(model, 0.0), old.calls.get(model, 0.0))
        self.calls += calls
        self.calls_per_s += calls / seconds if seconds > 0 else 0.0
        self.errors += _delta(new.errors.get(model, 0.0), old.errors.get(model, 0.0))
        old_buckets = old.buckets.get(model, {})
        for le, count in new.buckets.get(model, {}).items():
            self.buckets[le] = self.buckets.get(le, 0.0) + _delta(count, old_buckets.get(le, 0.0))

    def sample(self, at: float) -> LoadSample:
        return LoadSample(
            time=at,
            calls_per_s=self.calls_per_s,
            error_rate=self.errors / self.calls if self.calls else 0.0,
            p50_s=quantile(0.5, self.buckets),
            p99_s=quantile(0.99, self.buckets),
        )


def samples_of(pairs: Iterable[tuple[Counters, Counters]], at: float) -> dict[str, LoadSample]:
    """One sample per model from (new, old) scrapes of each gateway."""
    intervals: dict[str, _Interval] = {}
    for new, old in pairs:
        for model in set(new.calls) | set(new.buckets):
            intervals.setdefault(model, _Interval()).add(model, new, old)
    return {model: interval.sample(at) for model, interval in intervals.items()}


class TrackerState(enum.Enum):
    LATENT = "latent"
    STARTED = "started"
    CLOSED = "closed"


class LoadTracker:
    """Scrapes the gateways in the background and keeps the last ``keep`` samples per model.

    ``start()`` (on the event loop) and ``stop()`` once each; the background task runs one
    ``scrape()`` pass every ``interval_s``. ``models()`` and ``scrape_errors`` may be read
    from any thread.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        interval_s: float = 5.0,
        keep: int = 120,
        timeout_s: float = 2.0,
    ) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.keep = keep
        self.state = TrackerState.LATENT
        self.timeout_s = timeout_s
        self._last: dict[str, Counters] = {}
        self._rings: dict[str, deque[LoadSample]] = {}
        #: What ``models()`` returns: rebuilt after each pass, never mutated (read from threads).
        self._snapshot: dict[str, ModelLoad] = {}
        #: Per gateway id: why its last scrape failed (replaced after each pass, never mutated).
        self.scrape_errors: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def models(self) -> dict[str, ModelLoad]:
        """Per model seen by a gateway in the last ``keep`` intervals: its samples."""
        return self._snapshot

    def start(self) -> None:
        if self.state is not TrackerState.LATENT:
            raise RuntimeError(f"LoadTracker.start() in state {self.state.value}")
        self.state = TrackerState.STARTED
        self._task = asyncio.get_running_loop().create_task(self._run(), name="load-tracker")

    async def stop(self) -> None:
        if self.state is TrackerState.CLOSED:
            return
        self.state = TrackerState.CLOSED
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            while True:
                try:
                    await self.scrape(http)
                except Exception:
                    log.exception("load scrape pass failed")
                await asyncio.sleep(self.interval_s)

    async def scrape(self, http: httpx.AsyncClient) -> None:
        """Scrape every gateway once and append one sample per model that had a gateway
        scraped twice in a row."""
        gateways = await asyncio.to_thread(self.registry.read_children, layout.GATEWAYS, Gateway)
        targets = {gid: g.metrics_address for gid, g in gateways.items() if g.metrics_address}
        scraped = await asyncio.gather(*(_scrape(http, address) for address in targets.values()))
        now = time.time()
        pairs = []
        current: dict[str, Counters] = {}
        errors: dict[str, str] = {}
        for (gateway_id, address), counters in zip(targets.items(), scraped, strict=True):
            if isinstance(counters, str):
                if gateway_id not in self.scrape_errors:
                    log.warning("cannot scrape gateway %s at %s: %s", gateway_id, address, counters)
                errors[gateway_id] = f"{address}: {counters}"
                continue
            current[gateway_id] = counters
            previous = self._last.get(gateway_id)
            if previous is not None:
                pairs.append((counters, previous))
        self._last = current
        self.scrape_errors = errors
        for model, sample in samples_of(pairs, now).items():
            self._rings.setdefault(model, deque(maxlen=self.keep)).append(sample)
        horizon = now - self.keep * self.interval_s
        for model in [m for m, ring in self._rings.items() if ring[-1].time < horizon]:
            del self._rings[model]
        self._snapshot = {
            model: ModelLoad(model=model, samples=list(ring))
            for model, ring in sorted(self._rings.items())
        }


async def _scrape(http: httpx.AsyncClient, address: str) -> Counters | str:
    """The counters of the gateway at ``address``, or why they cannot be read."""
    try:
        response = await http.get(f"http://{address}/metrics")
        response.raise_for_status()
        return parse_counters(response.text, time.monotonic())
    except (httpx.HTTPError, ValueError) as err:
        return str(err) or type(err).__name__
