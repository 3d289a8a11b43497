"""The worker agent's Prometheus metrics, all defined here against a registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MODEL_STATES = ("LOADING", "READY", "FAILED", "UNLOADING")
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class WorkerMetrics:
    """Every metric of one agent. Tests pass a fresh :class:`CollectorRegistry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.models = Gauge(
            "modelgate_worker_models",
            "Model versions on this worker, by state",
            ["state"],
            registry=registry,
        )
        self.routes = Gauge(
            "modelgate_worker_routes", "Routes this worker publishes", registry=registry
        )
        self.pull_bytes = Counter(
            "modelgate_worker_pull_bytes",
            "Artifact bytes pulled, by URI scheme",
            ["scheme"],
            registry=registry,
        )
        self.pull_seconds = Histogram(
            "modelgate_worker_pull_seconds",
            "Seconds to pull, verify and unpack one artifact",
            registry=registry,
            buckets=_SECONDS,
        )
        self.pulls = Counter(
            "modelgate_worker_pulls",
            "Artifact pulls, by result (ok, rejected, unavailable)",
            ["result"],
            registry=registry,
        )
        self.load_seconds = Histogram(
            "modelgate_worker_load_seconds",
            "Seconds from a load request until the backend reports the model ready",
            registry=registry,
            buckets=_SECONDS,
        )
        self.loads = Counter(
            "modelgate_worker_loads",
            "Load requests sent to the backend, by result (ok, error)",
            ["result"],
            registry=registry,
        )
        self.unloads = Counter(
            "modelgate_worker_unloads", "Unload requests sent to the backend", registry=registry
        )
        self.backend_restarts = Counter(
            "modelgate_worker_backend_restarts",
            "Restarts of the model server this agent launched",
            registry=registry,
        )
        self.backend_live = Gauge(
            "modelgate_worker_backend_live",
            "1 if the model server answered the last liveness probe",
            registry=registry,
        )
        self.heartbeats = Counter(
            "modelgate_worker_heartbeats", "Heartbeats written to ZooKeeper", registry=registry
        )
        self.heartbeat_failures = Counter(
            "modelgate_worker_heartbeat_failures",
            "Heartbeats that could not be written (ZooKeeper unreachable)",
            registry=registry,
        )
        self.zk_connected = Gauge(
            "modelgate_worker_zk_connected",
            "1 while the ZooKeeper session is connected",
            registry=registry,
        )
        for state in MODEL_STATES:
            self.models.labels(state=state).set(0)
        for result in ("ok", "rejected", "unavailable"):
            self.pulls.labels(result=result)
        for result in ("ok", "error"):
            self.loads.labels(result=result)
