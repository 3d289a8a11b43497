"""Every Prometheus metric of the gateway, created against a passed-in CollectorRegistry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
#: Cold starts take seconds: a worker loads the model after the leader placed it.
_COLD_START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)


class GatewayMetrics:
    """The gateway's metrics (prefix ``modelgate_``); tests pass a fresh registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "modelgate_gateway_requests",
            "Calls answered, by model, version, surface and gRPC code.",
            ["model", "version", "surface", "code"],
            registry=registry,
        )
        self.fast_path_requests = Counter(
            "modelgate_gateway_fastpath_requests",
            "Calls HAProxy's fast path answered (also in modelgate_gateway_requests_total),"
            " by model and gRPC code.",
            ["model", "code"],
            registry=registry,
        )
        self.errors = Counter(
            "modelgate_gateway_errors",
            "Calls answered with a code other than OK, by model, version, surface, code and "
            "source: backend (the backend's own answer, passed through) or gateway.",
            ["model", "version", "surface", "code", "source"],
            registry=registry,
        )
        self.latency = Histogram(
            "modelgate_gateway_latency_seconds",
            "Time spent per stage (preprocess, route, backend, postprocess, total).",
            ["stage", "model", "surface"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "modelgate_gateway_in_flight",
            "Calls being served, by surface.",
            ["surface"],
            registry=registry,
            multiprocess_mode="livesum",  # NOTE: summed over live workers (gateway/workers.py)
        )
        self.limited = Counter(
            "modelgate_gateway_limited",
            "Calls refused with RESOURCE_EXHAUSTED for being over a model's limits, by model "
            "and limit (concurrency: its max_concurrency; rate: its rate_limit).",
            ["model", "limit"],
            registry=registry,
        )
        self.cold_start = Histogram(
            "modelgate_gateway_cold_start_seconds",
            "Call arrival to answer of the calls that waited for a model's first instance "
            "(scale to zero), answered OK.",
            ["model"],
            buckets=_COLD_START_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "modelgate_gateway_retries",
            "Attempts retried on another instance after a connection-level failure.",
            ["model"],
            registry=registry,
        )
        self.ejections = Counter(
            "modelgate_gateway_ejections",
            "Backend addresses ejected after consecutive connection failures.",
            ["address"],
            registry=registry,
        )
        self.sticky_without_key = Counter(
            "modelgate_gateway_sticky_without_key",
            "Calls to a sticky model without its sticky header (routed round-robin).",
            ["model"],
            registry=registry,
        )
        self.routes = Gauge(
            "modelgate_gateway_routes",
            "Ready instances per model in the current routing table.",
            ["model"],
            registry=registry,
        )
        self.zk_connected = Gauge(
            "modelgate_gateway_zk_connected",
            "1 while the gateway's ZooKeeper session is connected, else 0.",
            registry=registry,
        )
        self.plugin_seconds = Histogram(
            "modelgate_gateway_plugin_seconds",
            "Time in plugin hooks, by plugin (name@version) and stage.",
            ["plugin", "stage"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.plugin_errors = Counter(
            "modelgate_gateway_plugin_errors",
            "Plugin hook failures, by plugin, stage and gRPC code.",
            ["plugin", "stage", "code"],
            registry=registry,
        )
        self.plugin_loads = Counter(
            "modelgate_gateway_plugin_loads",
            "Plugin versions loaded for a model, by plugin and outcome (loaded/failed).",
            ["plugin", "outcome"],
            registry=registry,
        )
        self.table_swaps = Counter(
            "modelgate_gateway_table_swaps",
            "Routing tables built from ZooKeeper and swapped in.",
            registry=registry,
        )
        self.dataplane_restarts = Counter(
            "modelgate_gateway_dataplane_restarts",
            "Times the gateway restarted HAProxy (its data plane) after it exited.",
            registry=registry,
        )
        self.worker_restarts = Counter(
            "modelgate_gateway_worker_restarts",
            "Times the gateway restarted a Python worker (--python-workers) after it exited.",
            registry=registry,
        )
        self.cache_lookups = Counter(
            "modelgate_gateway_cache_lookups",
            "Response cache lookups of cached models, by model and outcome (hit, miss, or "
            "bypass: the caller's modelgate-cache: bypass header).",
            ["model", "outcome"],
            registry=registry,
        )
        self.cache_unavailable = Counter(
            "modelgate_gateway_cache_unavailable",
            "Response cache operations (get, set) skipped because Redis did not answer.",
            ["op"],
            registry=registry,
        )
        self.shadow_calls = Counter(
            "modelgate_gateway_shadow_calls",
            "Calls copied to a model's shadow target, by model and target.",
            ["model", "target"],
            registry=registry,
        )
        self.shadow_errors = Counter(
            "modelgate_gateway_shadow_errors",
            "Shadow copies that failed, by model, target and gRPC code.",
            ["model", "target", "code"],
            registry=registry,
        )
        self.shadow_dropped = Counter(
            "modelgate_gateway_shadow_dropped",
            "Sampled shadow copies not sent because too many were in flight, by model.",
            ["model"],
            registry=registry,
        )
        self.shadow_latency = Histogram(
            "modelgate_gateway_shadow_latency_seconds",
            "Time the shadow target took to answer a copy, by model and target.",
            ["model", "target"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.shadow_agreement = Counter(
            "modelgate_gateway_shadow_agreement",
            "Shadow answers compared with the primary's, by model, target and outcome "
            "(agree, disagree).",
            ["model", "target", "outcome"],
            registry=registry,
        )
        self.loop_lag = Histogram(
            "modelgate_gateway_loop_lag_seconds",
            "How late the serving event loop woke a task asking to wake every few ms (the "
            "time every call on the loop waited behind other work).",
            buckets=_BUCKETS,
            registry=registry,
        )
        self.loop_stall_max = Gauge(
            "modelgate_gateway_loop_stall_max_seconds",
            "Longest stall of the serving event loop in the last 10 s.",
            registry=registry,
        )
        self.loop_stall_loop_cpu = Gauge(
            "modelgate_gateway_loop_stall_loop_cpu_seconds",
            "CPU the event loop's thread used during that longest stall (code on the loop).",
            registry=registry,
        )
        self.loop_stall_process_cpu = Gauge(
            "modelgate_gateway_loop_stall_process_cpu_seconds",
            "CPU the whole gateway process used during that longest stall (the part beyond "
            "the loop's is other threads; the stall beyond this, the process not running).",
            registry=registry,
        )
