"""The scale benchmark end to end at a tiny size: every figure is there and makes sense.

Runs ``python -m bench.scale`` as a user would (a real 3-server ZooKeeper ensemble whose leader
is killed in each churn, manager, gateways in both data planes, simulated workers); no figure
is compared with a time limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scale.run import FIELDS, MODES

MODELS, REPLICAS, WORKERS, CHURN_S, CHURN_RATE = 20, 1, 3, 2, 10
#: /models/<m>, its versions/ and versions/1, /routes/<m>, <m>/1 and the route, the assignment.
NODES_PER_MODEL = 7


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_fleet_writes_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "scale.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "bench.scale", "--models", str(MODELS), "--replicas",
            str(REPLICAS), "--workers", str(WORKERS), "--churn-s", str(CHURN_S), "--churn-rate",
            str(CHURN_RATE), "--session-timeout-s", "2", "--status-calls", "5", "--cold-starts",
            "1", "--zk-ensemble", "3", "--workdir", str(tmp_path / "work"), "--output", str(output),
        ],
        capture_output=True,
        text=True,
        timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(output.read_text())

    assert set(FIELDS) <= set(result)
    assert (result["models"], result["replicas"], result["workers"]) == (MODELS, REPLICAS, WORKERS)
    runs = result["runs"]
    assert [r["dataplane"] for r in runs] == list(MODES)
    for run in runs:
        assert set(FIELDS) <= set(run)
        assert run["zk_nodes"] >= NODES_PER_MODEL * MODELS
        assert run["table_build_s"] >= 0
        assert run["gateway_complete_s"] >= run["gateway_ready_s"] > 0
        assert run["churn_changes"] > 0
        assert run["zk_servers"] == 3 and run["zk_reelection_s"] > 0
        assert run["gateway_call_failures"] == 0, run["gateway_call_failure_examples"]
        assert run["churn_changes"] + run["churn_skipped"] == CHURN_S * CHURN_RATE
        assert 0 < run["route_update_p50_ms"] <= run["route_update_p99_ms"]
        assert 0 < run["zk_watch_p50_ms"] <= run["zk_watch_p99_ms"]
        assert run["loop_stall_max_ms"] >= 0
        assert run["loop_stall_process_cpu_ms"] >= run["loop_stall_loop_cpu_ms"] >= 0
        assert run["gateway_rss_mb"] > 0
        assert run["reconcile_pass_s"] > 0
        assert run["status_api_ms"] > 0
        assert run["replaced_replicas"] > 0
        assert run["replace_worker_s"] > 0
    haproxy, python = runs
    assert haproxy["haproxy_rss_mb"] > 0
    assert python["haproxy_rss_mb"] == 0
    assert haproxy["replaced_worker"] != python["replaced_worker"]
    for name in FIELDS:
        worst = [r[name] for r in runs if r[name] is not None]
        assert result[name] == (max(worst) if worst else None), name
    assert "table_build_s" in done.stdout  # the summary table is printed
