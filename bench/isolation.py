"""Isolation figure (#14): model B's p99 alone vs with model A flooded at 10x its limits.

Starts a real ZooKeeper, Triton (``iso_a`` and ``iso_b``, two add_one models) and a gateway
per data plane (``--dataplane python``: A and B share the Python process; ``haproxy``: both
take the fast path, and HAProxy itself refuses A's calls over its limits). ``iso_a`` has
``limits: {max_concurrency, rate_limit}``. For each data plane, B is measured by Triton's
``perf_analyzer`` (KServe ModelInfer naming version 1) alone, then while a grpc.aio driver in
this process floods A with ``--factor`` times its limits: ``factor * max_concurrency``
callers offering ``factor * rate_limit`` calls/s in all (perf_analyzer stops at the first
error, and A's calls are refused by design, so it cannot be A's load generator). The two are
measured in turns, ``--rounds`` times (a shared machine's load drifts: both see the same
drift); the ratio is of the medians. Last, A's flood alone for a window: the gateway's CPU
(its process tree, HAProxy included; in all and by process name) per call of A, nearly all
refused, and for scale the same processes' CPU share in a window without calls. Prints the
figures and writes ``bench/results/isolation.json``.

Run: ``.venv/bin/python -m bench.isolation`` (``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from tritonclient.grpc import service_pb2 as kserve

from bench.run import RESULTS
from bench.stack import BenchStack
from bench.tools import perf_analyzer
from examples.models import write_add_one
from registry.records import Limits, Model

A, B, ROOT = "iso_a", "iso_b", "/isolation"
INFER = "/inference.GRPCInferenceService/ModelInfer"


def infer_body(model: str, elements: int) -> bytes:
    request = kserve.ModelInferRequest(model_name=model, model_version="1")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[elements])
    request.raw_input_contents.append(np.ones(elements, np.float32).tobytes())
    return request.SerializeToString()


class Flood:
    """``callers`` grpc.aio callers of A offering ``rate`` calls/s in all, on a thread of
    their own; the codes they got back."""

    def __init__(self, address: str, body: bytes, callers: int, rate: float) -> None:
        self.address, self.body, self.callers, self.rate = address, body, callers, rate
        self.codes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    async def _run(self) -> None:
        interval = self.callers / self.rate  # NOTE: each caller's share of the offered rate
        async with grpc.aio.insecure_channel(self.address) as channel:
            call = channel.unary_unary(INFER)

            async def caller(offset: float) -> None:
                next_at = time.monotonic() + offset
                while not self._stop.is_set():
                    try:
                        await call(self.body, timeout=10)
                        self.codes["OK"] += 1
                    except grpc.aio.AioRpcError as err:
                        self.codes[err.code().name] += 1
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))

            await asyncio.gather(
                *(caller(n * interval / self.callers) for n in range(self.callers))
            )


def cpu_seconds_by_name(root: int) -> Counter[str]:
    """utime + stime of ``root`` and its descendants, by process name (``haproxy``; the
    Python gateway's processes as ``python -m <module>``)."""
    total: Counter[str] = Counter()
    top = psutil.Process(root)
    for proc in (top, *top.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            name, args = proc.name(), proc.cmdline()
            if "-m" in args[:-1]:
                name = f"{name} -m {args[args.index('-m') + 1]}"
            total[name] += times.user + times.system
    return total


def measure_b(address: str, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """B's throughput and latency by perf_analyzer (it fails on any error of B's calls)."""
    binary, env = perf_analyzer()
    cmd = [
        str(binary), "-m", B, "-x", "1", "-u", address, "-i", "grpc",
        "--concurrency-range", f"{args.b_concurrency}:{args.b_concurrency}",
        "--shape", f"INPUT0:{args.elements}", "--measurement-interval", str(args.window_ms),
        "--max-trials", "10", "--stability-percentage", "100", "-f", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer on {B} failed:\n{done.stdout}\n{done.stderr}")
    with out.open() as f:
        (row,) = list(csv.DictReader(f))
    return {
        "rps": round(float(row["Inferences/Second"]), 1),
        "p50_us": float(row["p50 latency"]),
        "p99_us": float(row["p99 latency"]),
    }


def run(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    limits = Limits(max_concurrency=args.max_concurrency, rate_limit=args.rate_limit)
    perf_analyzer()  # extract it before anything starts
    with BenchStack(workdir, ROOT, "iso") as stack:
        for name in (A, B):
            write_add_one(stack.triton.model_repository, name)
        stack.start_triton((A, B))
        for name in (A, B):
            stack.route(Model(name=name, backend="triton", limits=limits if name == A else None))
        results: dict[str, Any] = {}
        flood_body = infer_body(A, args.elements)
        for dataplane in args.dataplane:
            gateway = stack.gateway(dataplane, dataplane)
            address = f"127.0.0.1:{gateway.port('grpc')}"
            callers = args.factor * args.max_concurrency
            alone, flooded, codes = [], [], Counter[str]()
            for n in range(args.rounds):
                alone.append(measure_b(address, args, workdir / f"{dataplane}-alone-{n}.csv"))
                with Flood(address, flood_body, callers, args.factor * args.rate_limit) as flood:
                    flooded.append(
                        measure_b(address, args, workdir / f"{dataplane}-flooded-{n}.csv")
                    )
                codes += flood.codes
            window_s = args.window_ms / 1000
            cpu_before = cpu_seconds_by_name(gateway.pid)
            time.sleep(window_s)  # NOTE: the idle window measured, not a wait
            idle_cpu = cpu_seconds_by_name(gateway.pid)
            idle_cpu.subtract(cpu_before)
            cpu_before = cpu_seconds_by_name(gateway.pid)
            with Flood(address, flood_body, callers, args.factor * args.rate_limit) as flood:
                time.sleep(window_s)  # NOTE: the measured window, not a wait
            flood_cpu = cpu_seconds_by_name(gateway.pid)
            flood_cpu.subtract(cpu_before)
            flood_calls = max(1, sum(flood.codes.values()))
            p99_alone = statistics.median(m["p99_us"] for m in alone)
            p99_flooded = statistics.median(m["p99_us"] for m in flooded)
            results[dataplane] = {
                "b_alone": alone,
                "b_with_a_flooded": flooded,
                "b_p99_us_median": {"alone": p99_alone, "with_a_flooded": p99_flooded},
                "p99_ratio": round(p99_flooded / p99_alone, 2),
                "a_flood": {"callers": callers, "offered_per_s": args.factor * args.rate_limit,
                            "answers": dict(codes),
                            "gateway_cpu_us_per_call_alone": round(
                                1e6 * flood_cpu.total() / flood_calls),
                            "cpu_us_per_call_by_process": {
                                name: round(1e6 * seconds / flood_calls)
                                for name, seconds in sorted(flood_cpu.items())},
                            "idle_cpu_share_by_process": {
                                name: round(seconds / window_s, 3)
                                for name, seconds in sorted(idle_cpu.items())}},
            }  # fmt: skip
            stack.stop(gateway)
        return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataplane", nargs="+", default=["python", "haproxy"])
    parser.add_argument("--max-concurrency", type=int, default=4, help="A's max_concurrency")
    parser.add_argument("--rate-limit", type=float, default=50.0, help="A's rate_limit")
    parser.add_argument("--factor", type=int, default=10, help="A's flood over its limits")
    parser.add_argument("--b-concurrency", type=int, default=4, help="perf_analyzer on B")
    parser.add_argument("--elements", type=int, default=16, help="FP32 elements per request")
    parser.add_argument("--window-ms", type=int, default=3000, help="perf_analyzer window")
    parser.add_argument("--rounds", type=int, default=3, help="alone/flooded turns")
    parser.add_argument("--output", type=Path, default=RESULTS / "isolation.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modelgate-isolation-") as tmp:
        results = run(Path(tmp), args)
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "a_limits": {"max_concurrency": args.max_concurrency, "rate_limit": args.rate_limit},
        "generator": "perf_analyzer 2.41.0 (-i grpc) on B; a grpc.aio driver floods A",
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    for dataplane, r in results.items():
        p99 = r["b_p99_us_median"]
        print(
            f"{dataplane}: B p99 alone {p99['alone']:.0f} us, with A flooded "
            f"{p99['with_a_flooded']:.0f} us (medians of {args.rounds}): {r['p99_ratio']:.2f}x"
        )


if __name__ == "__main__":
    main()
