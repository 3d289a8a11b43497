"""The worker agent's Prometheus metrics, all defined here against a registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from registry import layout
from worker_agent.usage import Measurement

MODEL_STATES = ("LOADING", "READY", "FAILED", "UNLOADING")
OOM_CAUSES = ("guard", "sigkill")
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
            "modelgate_worker_heartbeats",
            "Heartbeats done (probes and measurements; the record writes they led to are in"
            " modelgate_worker_record_writes_total)",
            registry=registry,
        )
        self.record_writes = Counter(
            "modelgate_worker_record_writes",
            "Worker record writes decided, by reason: change (what readers use changed), usage"
            " (measured usage moved past a step), refresh (the heartbeat time), or skipped",
            ["reason"],
            registry=registry,
        )
        self.heartbeat_failures = Counter(
            "modelgate_worker_heartbeat_failures",
            "Worker record writes that failed (ZooKeeper unreachable)",
            registry=registry,
        )
        self.zk_connected = Gauge(
            "modelgate_worker_zk_connected",
            "1 while the ZooKeeper session is connected",
            registry=registry,
        )
        self.server_cpu = Gauge(
            "modelgate_worker_server_cpu_cores",
            "CPU cores the model server's process tree used over the last heartbeat",
            registry=registry,
        )
        self.server_memory = Gauge(
            "modelgate_worker_server_memory_mb",
            "Resident memory (RSS, MiB) of the model server's process tree at the last heartbeat",
            registry=registry,
        )
        self.model_cpu = Gauge(
            "modelgate_worker_model_cpu_cores",
            "CPU cores one model's own processes used over the last heartbeat",
            ["model", "version"],
            registry=registry,
        )
        self.model_memory = Gauge(
            "modelgate_worker_model_memory_mb",
            "Resident memory (RSS, MiB) of one model's own processes at the last heartbeat",
            ["model", "version"],
            registry=registry,
        )
        self.measure_seconds = Histogram(
            "modelgate_worker_usage_measure_seconds",
            "Seconds one measurement of the model server's process tree took",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.out_of_memory = Counter(
            "modelgate_worker_out_of_memory",
            "Times the model server ran out of memory, by cause (guard: the agent killed it "
            "over --capacity-memory-mb; sigkill: killed from outside near the capacity)",
            ["cause"],
            registry=registry,
        )
        self._model_labels: set[tuple[str, str]] = set()
        for cause in OOM_CAUSES:
            self.out_of_memory.labels(cause=cause)
        for state in MODEL_STATES:
            self.models.labels(state=state).set(0)
        for result in ("ok", "rejected", "unavailable"):
            self.pulls.labels(result=result)
        for result in ("ok", "error"):
            self.loads.labels(result=result)

    def set_usage(self, measured: Measurement) -> None:
        """Export one measurement; models no longer measured lose their series."""
        self.server_cpu.set(measured.server.cpu)
        self.server_memory.set(measured.server.memory_mb)
        labels = set()
        for key, usage in measured.models.items():
            model, version = layout.parse_assignment_key(key)
            labels.add((model, str(version)))
            self.model_cpu.labels(model=model, version=str(version)).set(usage.cpu)
            self.model_memory.labels(model=model, version=str(version)).set(usage.memory_mb)
        for gone in self._model_labels - labels:
            self.model_cpu.remove(*gone)
            self.model_memory.remove(*gone)
        self._model_labels = labels
