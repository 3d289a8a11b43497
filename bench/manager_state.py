"""A quick measure of the manager's cluster view and reconcile loop at fleet size.

A real ZooKeeper (deploy/local), the real manager app with its reconcile loop, and synthetic
nodes: N models x 1 version, W workers (ephemeral, one session for the fleet and one for the
worker that is killed), and a route per assignment. Prints one JSON line:

- ``view_load_s``: the manager's start-up until its view has loaded every node;
- ``initial_place_s``: leader elected → every replica assigned (one full pass, batched writes);
- ``reconcile_pass_s``: a steady pass after one model changed (median and max of 20);
- ``full_pass_s``: the planning of a full pass (copy of the view included), nothing to change;
- ``replace_worker_s``: the worker holding the most replicas killed → all re-placed;
- ``status_api_ms``: ``GET /v1/models/<m>/status`` p50/p99 (in-process ASGI client).

Manager side only; ``bench/scale`` measures the whole stack.

    python -m bench.manager_state --models 10000 --replicas 3 --workers 100
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from deploy.local.zookeeper import LocalZooKeeper
from manager_api.app import create_app
from manager_api.auth import TokenEntry, TokenStore
from manager_api.reconcile import Reconciler, plan_pass
from manager_api.settings import ManagerSettings
from manager_api.state import ClusterView
from registry import Registry, layout
from registry.records import Model, ModelVersion, Record, Route, Worker

TOKEN = "bench-token-123"
CHUNK = 2000


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` (10 ms) until true; return the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - started


def write(reg: Registry, nodes: dict[str, Record]) -> None:
    items = list(nodes.items())
    for i in range(0, len(items), CHUNK):
        reg.write_many(dict(items[i : i + CHUNK]))


def pass_seconds(metrics: CollectorRegistry) -> tuple[float, float]:
    total = metrics.get_sample_value("modelgate_manager_reconcile_seconds_sum") or 0.0
    count = metrics.get_sample_value("modelgate_manager_reconcile_seconds_count") or 0.0
    return total, count


def run(models: int, replicas: int, workers: int, workdir: Path) -> dict[str, object]:
    zk = LocalZooKeeper(workdir / "zk", heap_mb=1024)
    zk.start()
    root = "/bench"
    reg = Registry(zk.hosts, root).start()
    fleet = Registry(zk.hosts, root).start()
    victim_reg = Registry(zk.hosts, root).start()
    try:
        names = [f"model-{i:05d}" for i in range(models)]
        nodes: dict[str, Record] = {}
        for name in names:
            nodes[layout.model(name)] = Model(name=name, backend="triton", replicas=replicas)
            nodes[layout.version(name, 1)] = ModelVersion(version=1, artifact_uri=f"file:///{name}")
        write(reg, nodes)
        worker_ids = [f"worker-{i:03d}" for i in range(workers)]
        for wid in worker_ids:
            record = Worker(worker_id=wid, host="127.0.0.1", backend="triton", address="x:1")
            (victim_reg if wid == worker_ids[0] else fleet).register_ephemeral(
                layout.worker(wid), record
            )

        tokens = TokenStore([TokenEntry(name="bench", role="admin", token=TOKEN)])
        settings = ManagerSettings(
            zk=zk.hosts,
            root=root,
            port=0,
            blob_dir=workdir / "blobs",
            reconcile_interval_s=5.0,
        )
        metrics = CollectorRegistry()
        app = create_app(settings, reg, tokens=tokens, metrics_registry=metrics)
        started = time.monotonic()
        with TestClient(app) as client:
            view_load_s = time.monotonic() - started
            rec: Reconciler = app.state.manager.reconciler
            view: ClusterView = app.state.manager.view

            def placed() -> bool:
                with view.read() as state:
                    return sum(len(k) for k in state.assignments.values()) >= models * replicas

            initial_place_s = wait(placed, 600, "every replica assigned")
            wait(lambda: rec.passes >= 1, 60, "the first pass")
            with view.read() as state:
                routes = {
                    layout.route(m, v, wid): Route(
                        model=m, version=v, worker_id=wid, address="x:1", protocol="kserve"
                    )
                    for wid, keys in state.assignments.items()
                    for m, v in keys
                }
            write(fleet, routes)
            last = list(routes)[-1]
            if not view.wait_written({last: routes[last]}, 120):
                raise SystemExit("the routes did not reach the view within 120s")

            # steady passes: one model changes, the pass places only it
            steady = []
            rnd = random.Random(7)
            for i in range(20):
                name = rnd.choice(names)
                before = pass_seconds(metrics)
                reg.put(
                    layout.model(name),
                    Model(name=name, backend="triton", replicas=replicas, memory_mb=i + 1),
                )
                wait(lambda n=before[1]: pass_seconds(metrics)[1] > n, 60, "a pass")
                after = pass_seconds(metrics)
                steady.append((after[0] - before[0]) / (after[1] - before[1]))

            # the planning of a full pass (the safety net), nothing to change
            full_passes = []
            for _ in range(3):
                t0 = time.perf_counter()
                state = view.copy()
                full = plan_pass(state, state.model_names())
                full_passes.append(time.perf_counter() - t0)
                assert not full.writes, "a full pass after the steady passes changes nothing"

            # replace: the worker holding the most replicas dies
            victim = worker_ids[0]
            with view.read() as state:
                lost = set(state.assignments.get(victim, {}))

            def replaced() -> bool:
                with view.read() as state:
                    if state.assignments.get(victim):
                        return False
                    return all(
                        len(state.holders.get(m, {}).get(v, ())) >= replicas for m, v in lost
                    )

            victim_reg.stop()
            replace_worker_s = wait(replaced, 120, "the dead worker's replicas re-placed")

            # status reads
            latencies = []
            headers = {"Authorization": f"Bearer {TOKEN}"}
            for i in range(300):
                name = names[(i * 7919) % models]
                t0 = time.perf_counter()
                r = client.get(f"/v1/models/{name}/status", headers=headers)
                latencies.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200 and r.json()["desired"] == replicas, r.text
            latencies.sort()
            t0 = time.perf_counter()
            everything = client.get("/v1/status", headers=headers)
            all_status_ms = (time.perf_counter() - t0) * 1000
            assert len(everything.json()) == models
        return {
            "models": models,
            "replicas": replicas,
            "workers": workers,
            "replicas_on_killed_worker": len(lost),
            "view_load_s": round(view_load_s, 3),
            "initial_place_s": round(initial_place_s, 3),
            "reconcile_pass_s": {
                "median": round(statistics.median(steady), 4),
                "max": round(max(steady), 4),
            },
            "full_pass_s": {"min": round(min(full_passes), 3), "max": round(max(full_passes), 3)},
            "replace_worker_s": round(replace_worker_s, 3),
            "status_api_ms": {
                "p50": round(latencies[len(latencies) // 2], 2),
                "p99": round(latencies[int(len(latencies) * 0.99) - 1], 2),
            },
            "all_status_ms": round(all_status_ms, 1),
        }
    finally:
        for r in (victim_reg, fleet, reg):
            if r.connected:
                r.stop()
        zk.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--workers", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelgate-manager-bench-") as tmp:
        print(json.dumps(run(args.models, args.replicas, args.workers, Path(tmp))))


if __name__ == "__main__":
    main()
