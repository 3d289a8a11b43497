"""Benchmark: the Python path over 1 and 2 Python workers (``--python-workers``).

The same stack as ``python -m bench`` (bench/run.py) plus two gateways with ``--dataplane
haproxy``, one with ``--python-workers 1`` and one with ``--python-workers 2``; then, at
each concurrency (default 8), ``perf_analyzer`` drives ``direct`` (KServe ModelInfer to
Triton) and TF-Serving Predict through each of them (``translated``: the Python path must
translate it to KServe). ``ratio`` is req/s over direct in the same run; ``proxy_cpu_us`` is
the CPU of the gateway's processes (its workers and HAProxy included) per call. Prints a
table and writes ``bench/results/workers.json``. Run: ``.venv/bin/python -m bench.workers``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench.run import (
    MODEL,
    RESULTS,
    Stack,
    arguments,
    run_perf_analyzer,
    tree_cpu_seconds,
    write_results,
)
from bench.tools import perf_analyzer

WORKERS = (1, 2)


def start_workers_gateways(stack: Stack) -> None:
    for workers in WORKERS:
        stack.gateway(f"workers{workers}", "haproxy", "--python-workers", str(workers))


def measure(stack: Stack, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for c in args.concurrency:
        direct_rps: float | None = None
        for path in ("direct", *(f"workers{n}" for n in WORKERS)):
            pid = stack.pid.get(path)
            if pid is not None:
                # NOTE: bench/run.py sends TF-Serving Predict to the "translated" address
                stack.address["translated"] = stack.address[path]
            cpu_before = tree_cpu_seconds(pid) if pid else 0.0
            calls_before = stack.inferences(MODEL)
            out = stack.workdir / f"{path}-{c}.csv"
            driven = "direct" if pid is None else "translated"
            result = run_perf_analyzer(stack, driven, c, args, out)
            calls = stack.inferences(MODEL) - calls_before
            cpu = tree_cpu_seconds(pid) - cpu_before if pid else None
            rps = result["rps"]
            if path == "direct":
                direct_rps = rps
            rows.append(
                {
                    "path": "direct" if pid is None else f"translated_w{path[len('workers') :]}",
                    "concurrency": c,
                    "rps": None if rps is None else round(rps, 1),
                    "p50_us": None if rps is None else round(result["p50_us"]),
                    "p99_us": None if rps is None else round(result["p99_us"]),
                    "ratio": round(rps / direct_rps, 3) if rps and direct_rps else None,
                    "proxy_cpu_us": None if cpu is None or not calls else round(cpu * 1e6 / calls),
                    "added_cpu_us": None,
                    "stable": result["stable"],
                }
            )
            print(f"  {rows[-1]['path']:14s} c={c}: {rows[-1]}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = arguments(
        "python -m bench.workers", __doc__ or "", [8], RESULTS / "workers.json"
    ).parse_args(argv)
    perf_analyzer()  # extract it before anything starts
    with tempfile.TemporaryDirectory(prefix="modelgate-bench-workers-") as tmp:
        with Stack(Path(tmp)) as stack:
            start_workers_gateways(stack)
            print(f"stack up: {stack.address}", flush=True)
            rows = measure(stack, args)
    write_results(
        args.output,
        rows,
        "perf_analyzer 2.41.0 (-i grpc; translated: --service-kind tfserving)",
        elements=args.elements,
    )


if __name__ == "__main__":
    main()
