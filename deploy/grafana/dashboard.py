"""Generate ``deploy/grafana/dashboards/modelgate.json`` (run after editing; a test checks
the JSON is up to date): ``.venv/bin/python deploy/grafana/dashboard.py``.

Metric names are those of ``gateway/metrics.py``, ``worker_agent/metrics.py`` and
``manager_api/metrics.py`` (``tests/deploy/test_drift.py`` checks every one exists).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "modelgate.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
M = 'model=~"$model"'
RATE = "[$__rate_interval]"


class _Builder:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = 0

    def row(self, title: str) -> None:
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        self.y += 1
        self.x = 0

    def panel(
        self, title: str, exprs: list[tuple[str, str]], unit: str = "short", desc: str = ""
    ) -> None:
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": "timeseries",
                "title": title,
                "description": desc,
                "datasource": DS,
                "gridPos": {"x": self.x, "y": self.y, "w": 12, "h": 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {
                    "legend": {
                        "displayMode": "table",
                        "placement": "right",
                        "calcs": ["lastNotNull", "max"],
                    },
                    "tooltip": {"mode": "multi"},
                },
                "targets": [
                    {"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": legend}
                    for i, (e, legend) in enumerate(exprs)
                ],
            }
        )
        if self.x == 0:
            self.x = 12
        else:
            self.x, self.y = 0, self.y + 8

    def end_row(self) -> None:
        if self.x:
            self.x, self.y = 0, self.y + 8


def build() -> dict[str, Any]:
    b = _Builder()
    req = f"modelgate_gateway_requests_total{{{M}}}"
    err = f'modelgate_gateway_requests_total{{{M}, code!="OK"}}'
    lat = "modelgate_gateway_latency_seconds_bucket"

    b.row("Gateway: traffic")
    b.panel(
        "Requests by model",
        [(f"sum by (model) (rate({req}{RATE}))", "{{model}}")],
        "reqps",
        "Calls answered per second (all codes), by model.",
    )
    b.panel(
        "Errors by model and code",
        [(f"sum by (model, code) (rate({err}{RATE}))", "{{model}} {{code}}")],
        "reqps",
        "Calls answered with a gRPC code other than OK.",
    )
    b.panel(
        "Error ratio by model",
        [(f"sum by (model) (rate({err}{RATE})) / sum by (model) (rate({req}{RATE}))", "{{model}}")],
        "percentunit",
    )
    b.panel(
        "Requests by surface",
        [
            (f"sum by (surface) (rate({req}{RATE}))", "{{surface}}"),
            ("sum by (surface) (modelgate_gateway_in_flight)", "in flight {{surface}}"),
        ],
        "reqps",
        "TF-Serving, KServe v2 and modelgate.v1 surfaces; in-flight calls per surface.",
    )
    b.panel(
        "Errors by source and code",
        [
            (
                f"sum by (source, code) (rate(modelgate_gateway_errors_total{{{M}}}{RATE}))",
                "{{source}} {{code}}",
            )
        ],
        "reqps",
        "Failed calls: source=backend is a backend's own answer passed through, "
        "source=gateway an answer the gateway decided (unknown model, bad bytes, no instance).",
    )
    fast = f"modelgate_gateway_fastpath_requests_total{{{M}}}"
    b.panel(
        "Fast path and Python path by model",
        [
            (f"sum by (model) (rate({fast}{RATE}))", "{{model}} fast path"),
            (
                f"sum by (model) (rate({req}{RATE})) - sum by (model) (rate({fast}{RATE}))",
                "{{model}} Python path",
            ),
        ],
        "reqps",
        "Calls HAProxy answered straight from a backend, and the rest (the Python gateway: "
        "plugins, translation, calls without a version...).",
    )
    b.end_row()

    b.row("Gateway: latency")
    b.panel(
        "Latency p99 by stage",
        [
            (
                f"histogram_quantile(0.99, sum by (le, stage) (rate({lat}{{{M}}}{RATE})))",
                "p99 {{stage}}",
            )
        ],
        "s",
        "Stages: preprocess and postprocess (plugin hooks), route (pick an instance), "
        "backend (model server call), total (the whole call).",
    )
    b.panel(
        "Latency p50 by stage",
        [
            (
                f"histogram_quantile(0.5, sum by (le, stage) (rate({lat}{{{M}}}{RATE})))",
                "p50 {{stage}}",
            )
        ],
        "s",
    )
    b.panel(
        "Total latency p99 by model",
        [
            (
                f'histogram_quantile(0.99, sum by (le, model) (rate({lat}{{{M}, stage="total"}}'
                f"{RATE})))",
                "{{model}}",
            )
        ],
        "s",
    )
    b.end_row()

    b.row("Gateway: routing and resilience")
    b.panel(
        "Routes per model (ready instances)",
        [(f"max by (model) (modelgate_gateway_routes{{{M}}})", "{{model}}")],
        desc="Ready instances per model in each gateway's routing table (max over gateways).",
    )
    b.panel(
        "Retries by model",
        [(f"sum by (model) (rate(modelgate_gateway_retries_total{{{M}}}{RATE}))", "{{model}}")],
        "ops",
        "Attempts retried on another instance after a connection-level failure.",
    )
    b.panel(
        "Ejections by backend address",
        [(f"sum by (address) (increase(modelgate_gateway_ejections_total{RATE}))", "{{address}}")],
        desc="Backend addresses ejected after consecutive connection failures.",
    )
    b.panel(
        "Sticky calls without a key by model",
        [
            (
                f"sum by (model) (rate(modelgate_gateway_sticky_without_key_total{{{M}}}{RATE}))",
                "{{model}}",
            )
        ],
        "reqps",
        "Calls to a sticky model that carried no sticky header (routed round-robin): "
        "clients that forgot the header.",
    )
    b.panel(
        "ZooKeeper sessions and routing-table swaps",
        [
            ("sum(modelgate_gateway_zk_connected)", "gateways connected"),
            ("sum(modelgate_worker_zk_connected)", "workers connected"),
            (f"sum(rate(modelgate_gateway_table_swaps_total{RATE}))", "table swaps/s"),
        ],
    )
    b.end_row()

    b.row("Gateway: plugins")
    b.panel(
        "Plugin hook time p99 by plugin and stage",
        [
            (
                "histogram_quantile(0.99, sum by (le, plugin, stage) "
                f"(rate(modelgate_gateway_plugin_seconds_bucket{RATE})))",
                "{{plugin}} {{stage}}",
            )
        ],
        "s",
    )
    b.panel(
        "Plugin errors and loads",
        [
            (
                f"sum by (plugin, stage, code) (rate(modelgate_gateway_plugin_errors_total{RATE}))",
                "error {{plugin}} {{stage}} {{code}}",
            ),
            (
                f"sum by (plugin, outcome) (increase(modelgate_gateway_plugin_loads_total{RATE}))",
                "load {{plugin}} {{outcome}}",
            ),
        ],
    )
    b.end_row()

    b.row("Workers")
    b.panel(
        "Worker model states",
        [("sum by (state) (modelgate_worker_models)", "{{state}}")],
        desc="Model versions on the workers by state (LOADING, READY, FAILED, UNLOADING).",
    )
    b.panel(
        "Model states per worker",
        [("sum by (instance, state) (modelgate_worker_models) > 0", "{{instance}} {{state}}")],
    )
    b.panel(
        "Model servers live and restarts",
        [
            ("modelgate_worker_backend_live", "live {{instance}}"),
            (f"increase(modelgate_worker_backend_restarts_total{RATE})", "restarts {{instance}}"),
        ],
    )
    b.panel(
        "Loads, unloads and pulls",
        [
            (f"sum by (result) (rate(modelgate_worker_loads_total{RATE}))", "load {{result}}"),
            (f"sum(rate(modelgate_worker_unloads_total{RATE}))", "unload"),
            (f"sum by (result) (rate(modelgate_worker_pulls_total{RATE}))", "pull {{result}}"),
        ],
        "ops",
    )
    b.panel(
        "Load and pull time p90",
        [
            (
                "histogram_quantile(0.9, sum by (le) "
                f"(rate(modelgate_worker_load_seconds_bucket{RATE})))",
                "load p90",
            ),
            (
                "histogram_quantile(0.9, sum by (le) "
                f"(rate(modelgate_worker_pull_seconds_bucket{RATE})))",
                "pull p90",
            ),
        ],
        "s",
    )
    b.panel(
        "Routes published and heartbeat failures",
        [
            ("sum by (instance) (modelgate_worker_routes)", "routes {{instance}}"),
            (
                f"sum by (instance) (increase(modelgate_worker_heartbeat_failures_total{RATE}))",
                "heartbeat failures {{instance}}",
            ),
        ],
    )
    b.end_row()

    b.row("Manager")
    b.panel(
        "Reconcile",
        [
            (
                f"sum by (outcome) (rate(modelgate_manager_reconcile_runs_total{RATE}))",
                "runs {{outcome}}",
            ),
            ("max(modelgate_manager_unplaced_replicas)", "unplaced replicas"),
            ("sum(modelgate_manager_leader)", "leaders"),
        ],
    )
    b.panel(
        "Manager REST requests by status",
        [
            (
                f"sum by (status) (rate(modelgate_manager_http_requests_total{RATE}))",
                "{{status}}",
            )
        ],
        "reqps",
    )
    b.end_row()

    models_query = "label_values(modelgate_gateway_requests_total, model)"
    return {
        "uid": "modelgate-overview",
        "title": "modelgate",
        "description": "Gateway traffic, errors and latency by model and stage; routes, "
        "retries and ejections; plugins; worker model states; manager reconcile.",
        "tags": ["modelgate"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"text": "Prometheus", "value": "prometheus"},
                },
                {
                    "name": "model",
                    "label": "Model",
                    "type": "query",
                    "datasource": DS,
                    "query": {"query": models_query, "refId": "models"},
                    "definition": models_query,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "refresh": 2,
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "annotations": {"list": []},
        "panels": b.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
