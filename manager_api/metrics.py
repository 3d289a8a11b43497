"""The manager's Prometheus metrics, all defined here against a passed-in registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ManagerMetrics:
    """Every metric of one manager; tests pass a fresh ``CollectorRegistry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "modelgate_manager_http_requests_total",
            "REST requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "modelgate_manager_http_request_seconds",
            "REST request latency by method and route template.",
            ["method", "route"],
            registry=registry,
        )
        self.is_leader = Gauge(
            "modelgate_manager_leader",
            "1 while this manager is the elected reconcile leader.",
            registry=registry,
        )
        self.reconcile_runs = Counter(
            "modelgate_manager_reconcile_runs_total",
            "Reconcile passes by outcome (ok/error).",
            ["outcome"],
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "modelgate_manager_reconcile_seconds",
            "Duration of one reconcile pass.",
            registry=registry,
        )
        self.assignment_changes = Counter(
            "modelgate_manager_assignment_changes_total",
            "Assignments written or removed by the reconcile loop.",
            ["change"],
            registry=registry,
        )
        self.unplaced_replicas = Gauge(
            "modelgate_manager_unplaced_replicas",
            "Replicas wanted but not placed at the last reconcile pass.",
            registry=registry,
        )
        self.autoscale_decisions = Counter(
            "modelgate_manager_autoscale_decisions_total",
            "Replica counts the autoscaler changed, by direction (start, up, down, wake, idle, "
            "evict, bounds).",
            ["direction"],
            registry=registry,
        )
        self.autoscale_replicas = Gauge(
            "modelgate_manager_autoscale_replicas",
            "Replicas the autoscaler wants per autoscaled model (a series per autoscaled model; "
            "removed when the model stops being autoscaled).",
            ["model"],
            registry=registry,
        )
        self.autoscale_seconds = Histogram(
            "modelgate_manager_autoscale_seconds",
            "Duration of one autoscaling tick (decisions and their writes).",
            registry=registry,
        )
        self.blob_bytes = Counter(
            "modelgate_manager_blob_upload_bytes_total",
            "Bytes stored in the blob store.",
            registry=registry,
        )
