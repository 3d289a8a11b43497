"""Benchmark: one model over every path, in one run, driven by Triton's ``perf_analyzer``.

Starts a real ZooKeeper, Triton (the model's route written by hand), a gateway with
``--dataplane haproxy`` (fast path), a gateway with ``--dataplane python``, and the Python
floor (``bench/floor.py``, a byte proxy with no routing). Then, at each concurrency:

- ``direct``: KServe ModelInfer straight to Triton;
- ``fastpath``: the same call through HAProxy (the gateway's native data plane);
- ``python``: the same call through the Python gateway (KServe passthrough);
- ``translated``: TF-Serving Predict through the Python gateway, translated to KServe;
- ``floor``: the same ModelInfer through the minimal grpc.aio proxy.

``proxy_cpu_us`` is the utime+stime of the proxy's processes (the gateway and its HAProxy)
per call, from /proc; calls are counted by Triton's own statistics. Prints a table and
writes ``bench/results/latest.json``. Run: ``.venv/bin/python -m bench`` (``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import tritonclient.grpc as triton_grpc

from bench.tools import perf_analyzer
from deploy.local.runner import Process, stop_all
from deploy.local.zookeeper import LocalZooKeeper
from examples.models import write_add_one
from registry import Registry, layout
from registry.records import Model, ModelVersion, Route
from worker_agent.tritonserver import TritonServer

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MODEL = "bench_add"
PATHS = ("direct", "fastpath", "python", "translated", "floor")


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and all its descendants (HAProxy runs under the gateway)."""
    total = 0.0
    try:
        top = psutil.Process(root)
        for proc in (top, *top.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    except psutil.Error:
        pass
    return total


class Stack:
    """ZooKeeper + Triton + two gateways + the floor proxy, torn down in reverse."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Process] = []
        self.zk = LocalZooKeeper(workdir / "zk")
        self.triton = TritonServer(workdir / "triton-models", workdir / "triton")
        self.registry: Registry | None = None
        self.address: dict[str, str] = {}
        self.pid: dict[str, int] = {}

    def spawn(self, name: str, *args: str) -> int:
        """Start ``python <args>`` and wait for its ready file; return its gRPC port."""
        proc = Process(name, [sys.executable, *args], log=self.workdir / f"{name}.log").start()
        self.procs.append(proc)
        self.pid[name] = proc.pid
        return int(proc.wait_ready(timeout=120)["ports"]["grpc"])

    def start(self) -> None:
        self.zk.start()
        self.registry = reg = Registry(self.zk.hosts, "/bench").start()
        write_add_one(self.triton.model_repository, MODEL)
        self.triton.start()
        client = triton_grpc.InferenceServerClient(self.triton.address)
        client.load_model(MODEL)
        client.close()
        reg.put(layout.model(MODEL), Model(name=MODEL, backend="triton"))
        reg.put(layout.version(MODEL, 1), ModelVersion(version=1, artifact_uri="file:///bench"))
        reg.put(
            layout.route(MODEL, 1, "bench-triton"),
            Route(model=MODEL, version=1, worker_id="bench-triton",
                  address=self.triton.address, protocol="kserve"),
        )  # fmt: skip
        self.address["direct"] = self.triton.address
        for path, dataplane in (("fastpath", "haproxy"), ("python", "python")):
            port = self.spawn(
                path, "-m", "gateway", "--zk", self.zk.hosts, "--root", "/bench", "--host",
                "127.0.0.1", "--port", "0", "--metrics-port", "0", "--gateway-id",
                f"bench-{path}", "--log-level", "WARNING", "--dataplane", dataplane,
            )  # fmt: skip
            self.address[path] = f"127.0.0.1:{port}"
        self.address["translated"] = self.address["python"]
        self.pid["translated"] = self.pid["python"]
        port = self.spawn("floor", "-m", "bench.floor", self.triton.address)
        self.address["floor"] = f"127.0.0.1:{port}"

    def inferences(self) -> int:
        """Calls Triton answered for the model (every path ends there)."""
        client = triton_grpc.InferenceServerClient(self.triton.address)
        try:
            stats = client.get_inference_statistics(MODEL, "1", as_json=True)
            return sum(int(s["inference_stats"]["success"].get("count", 0))
                       for s in stats["model_stats"])  # fmt: skip
        finally:
            client.close()

    def stop(self) -> None:
        stop_all(self.procs[::-1], 30)
        self.triton.stop()
        if self.registry is not None:
            self.registry.stop()
        self.zk.stop()


def run_perf_analyzer(
    stack: Stack, path: str, concurrency: int, args: argparse.Namespace, out: Path
) -> dict[str, float]:
    binary, env = perf_analyzer()
    cmd = [
        str(binary), "-m", MODEL, "-x", "1", "-u", stack.address[path], "-i", "grpc",
        "--concurrency-range", f"{concurrency}:{concurrency}", "--shape",
        f"INPUT0:{args.elements}", "--measurement-interval", str(args.window_ms),
        "--max-trials", "10", "--stability-percentage", "50", "-f", str(out),
    ]  # fmt: skip
    if path == "translated":
        cmd += ["--service-kind", "tfserving"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer on {path} failed:\n{done.stdout}\n{done.stderr}")
    with out.open() as f:
        (measured,) = list(csv.DictReader(f))
    return {
        "rps": float(measured["Inferences/Second"]),
        "p50_us": float(measured["p50 latency"]),
        "p99_us": float(measured["p99 latency"]),
    }


def measure(stack: Stack, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for c in args.concurrency:
        direct_rps = 0.0
        for path in PATHS:
            pid = stack.pid.get(path)
            cpu_before = tree_cpu_seconds(pid) if pid else 0.0
            calls_before = stack.inferences()
            result = run_perf_analyzer(stack, path, c, args, stack.workdir / f"{path}-{c}.csv")
            calls = stack.inferences() - calls_before
            cpu = tree_cpu_seconds(pid) - cpu_before if pid else None
            if path == "direct":
                direct_rps = result["rps"]
            rows.append(
                {
                    "path": path,
                    "concurrency": c,
                    "rps": round(result["rps"], 1),
                    "p50_us": round(result["p50_us"]),
                    "p99_us": round(result["p99_us"]),
                    "ratio": round(result["rps"] / direct_rps, 3) if direct_rps else None,
                    "proxy_cpu_us": None if cpu is None or not calls else round(cpu * 1e6 / calls),
                }
            )
            print(f"  {path:10s} c={c}: {rows[-1]}", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'path':10s} {'conc':>4s} {'req/s':>8s} {'p50 us':>8s} {'p99 us':>8s} "
             f"{'ratio':>6s} {'proxy CPU us/call':>17s}"]  # fmt: skip
    for r in rows:
        cpu = "-" if r["proxy_cpu_us"] is None else str(r["proxy_cpu_us"])
        lines.append(
            f"{r['path']:10s} {r['concurrency']:>4d} {r['rps']:>8.1f} {r['p50_us']:>8d} "
            f"{r['p99_us']:>8d} {r['ratio']:>6.2f} {cpu:>17s}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--elements", type=int, default=16, help="FP32 elements per request")
    parser.add_argument(
        "--window-ms", type=int, default=3000, help="perf_analyzer measurement window"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    perf_analyzer()  # extract it before anything starts
    with tempfile.TemporaryDirectory(prefix="modelgate-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.start()
            print(f"stack up: {stack.address}", flush=True)
            rows = measure(stack, args)
        finally:
            stack.stop()
    print()
    print(table(rows))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "generator": "perf_analyzer 2.41.0 (-i grpc; translated: --service-kind tfserving)",
                "model": MODEL,
                "elements": args.elements,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
