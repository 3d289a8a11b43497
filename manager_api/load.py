"""Per-model load as the gateways see it: calls/s, average calls in flight, error rate and
p50/p99 latency over the last minutes, the cold-start time of calls that waited for a first
instance, and for models with a response cache or shadow traffic their hit rate and shadow
agreement.

:class:`LoadTracker` scrapes every registered gateway's Prometheus ``/metrics`` (the
``metrics_address`` of its ``/gateways`` record) every ``interval_s`` seconds, turns the
counter and histogram-bucket deltas between two scrapes of one gateway into one sample per
model, sums the gateways, and keeps a ring of the last ``keep`` samples per model.
``LoadTracker.models()`` is the one way to read it (the console, ``GET /v1/load`` and the
autoscaler).

Calls in flight come from Little's law: the increase of the end-to-end latency histogram's
``_sum`` over an interval, divided by the interval, is the time-average number of calls in
flight (exact for the calls that finished in it).
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
#: Response cache lookups by outcome (hit, miss, bypass) and shadow answers compared with the
#: primary's by outcome (agree, disagree).
CACHE = "modelgate_gateway_cache_lookups"
SHADOW = "modelgate_gateway_shadow_agreement"
#: Call arrival to answer, for calls that waited for a first instance (scale to zero).
COLD_START = "modelgate_gateway_cold_start_seconds"


class LoadSample(BaseModel):
    """One model's load over one scrape interval, summed over the gateways."""

    time: float = Field(description="End of the interval (Unix seconds).")
    calls_per_s: float = Field(description="Calls answered per second.")
    in_flight: float = Field(
        default=0.0,
        description="Average calls in flight over the interval (total latency per second).",
    )
    error_rate: float = Field(description="Share of those calls answered with a code not OK.")
    p50_s: float | None = Field(description="Median end-to-end latency; None without calls.")
    p99_s: float | None = Field(description="99th percentile latency; None without calls.")
    cache_hit_rate: float | None = Field(
        default=None,
        description="Share of response cache lookups (hits and misses) that hit; None without "
        "lookups (no cache, or no call).",
    )
    shadow_agreement: float | None = Field(
        default=None,
        description="Share of compared shadow answers that agreed with the primary's; None "
        "without comparisons.",
    )
    cold_start_s: float | None = Field(
        default=None,
        description="Mean time from arrival to answer of the calls that waited for a first "
        "instance; None without such calls.",
    )


class ModelLoad(BaseModel):
    """The recent samples of one model, oldest first."""

    model: str
    samples: list[LoadSample]
    last_call: float | None = Field(
        default=None,
        description="End of the newest interval with calls (Unix seconds); None: none seen.",
    )


@dataclass
class Counters:
    """The cumulative figures one scrape of one gateway read, per model."""

    time: float
    calls: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    #: Per model: upper bound (``le``) -> cumulative count, summed over surfaces.
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    #: Per model: seconds spent in calls (the latency histogram's ``_sum``), over surfaces.
    busy_s: dict[str, float] = field(default_factory=dict)
    #: Per model: the cold-start histogram's ``_sum`` and ``_count``.
    cold_start_s: dict[str, float] = field(default_factory=dict)
    cold_starts: dict[str, float] = field(default_factory=dict)
    cache_hits: dict[str, float] = field(default_factory=dict)
    #: Hits and misses (a bypass is not a lookup the cache could answer).
    cache_lookups: dict[str, float] = field(default_factory=dict)
    shadow_agreed: dict[str, float] = field(default_factory=dict)
    shadow_compared: dict[str, float] = field(default_factory=dict)


def _add(into: dict[str, float], key: str, value: float) -> None:
    into[key] = into.get(key, 0.0) + value


def parse_counters(text: str, at: float) -> Counters:
    """The per-model calls, errors, latency buckets and sum, cold starts, cache lookups and
    shadow comparisons of a gateway's ``/metrics`` text."""
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
                if s.labels["stage"] != LATENCY_STAGE:
                    continue
                if s.name.endswith("_sum"):
                    _add(out.busy_s, s.labels["model"], s.value)
                elif s.name.endswith("_bucket"):
                    per_model = out.buckets.setdefault(s.labels["model"], {})
                    le = float(s.labels["le"])
                    per_model[le] = per_model.get(le, 0.0) + s.value
        elif family.name == COLD_START:
            for s in family.samples:
                if s.name.endswith("_sum"):
                    _add(out.cold_start_s, s.labels["model"], s.value)
                elif s.name.endswith("_count"):
                    _add(out.cold_starts, s.labels["model"], s.value)
        elif family.name == CACHE:
            for s in family.samples:
                outcome = s.labels["outcome"]
                if s.name.endswith("_total") and outcome in ("hit", "miss"):
                    _add(out.cache_lookups, s.labels["model"], s.value)
                    if outcome == "hit":
                        _add(out.cache_hits, s.labels["model"], s.value)
        elif family.name == SHADOW:
            for s in family.samples:
                if s.name.endswith("_total"):
                    _add(out.shadow_compared, s.labels["model"], s.value)
                    if s.labels["outcome"] == "agree":
                        _add(out.shadow_agreed, s.labels["model"], s.value)
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
    in_flight: float = 0.0
    calls: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    cache_hits: float = 0.0
    cache_lookups: float = 0.0
    shadow_agreed: float = 0.0
    shadow_compared: float = 0.0
    cold_start_s: float = 0.0
    cold_starts: float = 0.0

    def add(self, model: str, new: Counters, old: Counters) -> None:
        seconds = new.time - old.time
        calls = _delta(new.calls.get(model, 0.0), old.calls.get(model, 0.0))
        self.calls += calls
        busy = _delta(new.busy_s.get(model, 0.0), old.busy_s.get(model, 0.0))
        if seconds > 0:
            self.calls_per_s += calls / seconds
            self.in_flight += busy / seconds
        self.errors += _delta(new.errors.get(model, 0.0), old.errors.get(model, 0.0))
        old_buckets = old.buckets.get(model, {})
        for le, count in new.buckets.get(model, {}).items():
            self.buckets[le] = self.buckets.get(le, 0.0) + _delta(count, old_buckets.get(le, 0.0))
        for name in (
            "cache_hits",
            "cache_lookups",
            "shadow_agreed",
            "shadow_compared",
            "cold_start_s",
            "cold_starts",
        ):
            new_counts, old_counts = getattr(new, name), getattr(old, name)
            increase = _delta(new_counts.get(model, 0.0), old_counts.get(model, 0.0))
            setattr(self, name, getattr(self, name) + increase)

    def sample(self, at: float) -> LoadSample:
        return LoadSample(
            time=at,
            calls_per_s=self.calls_per_s,
            in_flight=self.in_flight,
            error_rate=self.errors / self.calls if self.calls else 0.0,
            p50_s=quantile(0.5, self.buckets),
            p99_s=quantile(0.99, self.buckets),
            cache_hit_rate=self.cache_hits / self.cache_lookups if self.cache_lookups else None,
            shadow_agreement=(
                self.shadow_agreed / self.shadow_compared if self.shadow_compared else None
            ),
            cold_start_s=self.cold_start_s / self.cold_starts if self.cold_starts else None,
        )


def samples_of(pairs: Iterable[tuple[Counters, Counters]], at: float) -> dict[str, LoadSample]:
    """One sample per model from (new, old) scrapes of each gateway."""
    intervals: dict[str, _Interval] = {}
    for new, old in pairs:
        for model in {
            *new.calls,
            *new.buckets,
            *new.cache_lookups,
            *new.shadow_compared,
            *new.cold_starts,
        }:
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
        #: Per model: the end of the newest interval with calls.
        self._last_call: dict[str, float] = {}
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
            if sample.calls_per_s > 0:
                self._last_call[model] = now
        horizon = now - self.keep * self.interval_s
        for model in [m for m, ring in self._rings.items() if ring[-1].time < horizon]:
            del self._rings[model]
            self._last_call.pop(model, None)
        self._snapshot = {
            model: ModelLoad(model=model, samples=list(ring), last_call=self._last_call.get(model))
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
