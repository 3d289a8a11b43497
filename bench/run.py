"""Benchmark: one model over every path, in one run, driven by Triton's ``perf_analyzer``.

Starts a real ZooKeeper, Triton (the model's route written by hand), a gateway with
``--dataplane haproxy`` (fast path), a gateway with ``--dataplane python``, and the Python
floor (``bench/floor.py``, a byte proxy with no routing). Then, at each concurrency:

- ``direct``: KServe ModelInfer straight to Triton;
- ``fastpath``: the same call through HAProxy (the gateway's native data plane);
- ``python``: the same call through the Python gateway (KServe passthrough);
- ``translated``: TF-Serving Predict through the Python gateway, translated to KServe;
- ``floor``: the same ModelInfer through the minimal grpc.aio proxy;
- ``plugin_async``, ``plugin_thread``, ``plugin_process``: the same ModelInfer through the
  Python gateway on a copy of the model whose plugin's hooks hand back what they get
  (``async def`` hooks, plain hooks in the thread pool, plain hooks in worker processes);
- ``digits_direct``: the digits example model (examples/digits) called with its ``PIXELS``
  tensor straight on Triton, and ``digits``: the same model through the Python gateway by
  ``Invoke`` with a PNG (the digits plugin decodes it in its worker processes, answers JSON).
  perf_analyzer cannot call ``Invoke``: both digits rows use this module's grpc.aio driver.

``proxy_cpu_us`` is the utime+stime of the proxy's processes (the gateway with what it
started: HAProxy, plugin worker processes) per call, from /proc; calls are counted by
Triton's own statistics. ``added_cpu_us`` is what a plugin adds: a ``plugin_*`` row over the
``python`` row at the same concurrency, ``digits`` over ``digits_direct`` (no proxy: all of
it). A measurement perf_analyzer cannot stabilise within 50% is taken again within 100%
(``stable: false``, ``*`` in the table: a noisy machine). Prints a table and writes
``bench/results/latest.json``. Run: ``.venv/bin/python -m bench`` (``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2 as kserve

from bench.stack import BenchStack
from bench.tools import perf_analyzer
from deploy.local.runner import Process
from examples.digits import train
from examples.digits.images import render
from examples.models import write_add_one
from protos.modelgate.v1 import gateway_pb2
from registry import layout
from registry.records import Model, Plugin
from udl.package import pack, parse_manifest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MODEL = "bench_add"
#: Paths driven by perf_analyzer, and the model each calls.
PATHS = {
    "direct": MODEL,
    "fastpath": MODEL,
    "python": MODEL,
    "translated": MODEL,
    "floor": MODEL,
    "plugin_async": f"{MODEL}_async",
    "plugin_thread": f"{MODEL}_thread",
    "plugin_process": f"{MODEL}_process",
}
DIGITS = "digits"
#: The row each path's ``ratio`` divides by (``direct`` when not listed; None: no ratio).
BASELINES: dict[str, str | None] = {"digits": "digits_direct", "digits_direct": None}
DIGITS_PLUGIN = REPO / "examples" / "digits" / "plugin"

#: The identity plugin of each ``plugin_*`` path: hooks that hand back what they get.
IDENTITY = {
    "async": """
import udl

class Identity(udl.Plugin):
    async def preprocess(self, request):
        return request

    async def postprocess(self, response, request):
        return response
""",
    "thread": """
import udl

class Identity(udl.Plugin):
    def preprocess(self, request):
        return request

    def postprocess(self, response, request):
        return response
""",
}
IDENTITY["process"] = IDENTITY["thread"]


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


class Stack(BenchStack):
    """The bench stack with its models and plugins, two gateways and the floor proxy."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, "/bench", "bench")
        self.address: dict[str, str] = {}
        self.pid: dict[str, int] = {}
        #: The digits example's held-out sample the digits rows send.
        self.digits_pixels = np.zeros(64, np.float32)

    def spawn(self, name: str, *args: str) -> Process:
        """Start ``python <args>``; its gRPC address in ``address``, its pid in ``pid``."""
        proc = super().spawn(name, *args)
        self.address[name] = f"127.0.0.1:{proc.port('grpc')}"
        self.pid[name] = proc.pid
        return proc

    def setup(self) -> None:
        models: dict[str, str | None] = {MODEL: None}
        for executor, source in IDENTITY.items():
            folder = self.workdir / f"identity-{executor}"
            folder.mkdir()
            (folder / "plugin.toml").write_text(
                f'name = "identity-{executor}"\nversion = "1"\n'
                f'entrypoint = "identity:Identity"\nexecutor = "{executor}"\n'
                "[timeouts]\nload = 60.0\n"  # NOTE: everything starts at once here
            )
            (folder / "identity.py").write_text(source)
            models[f"{MODEL}_{executor}"] = self.publish(folder)
        for name in models:
            write_add_one(self.triton.model_repository, name)
        x_train, x_test, y_train, _ = train.split()
        train.write_model(self.triton.model_repository, train.train(x_train, y_train), DIGITS)
        self.digits_pixels = x_test[0]
        self.start_triton((*models, DIGITS))
        models[DIGITS] = self.publish(DIGITS_PLUGIN)
        for name, plugin in models.items():
            self.route(Model(name=name, backend="triton", plugin=plugin))
        self.address["direct"] = self.address["digits_direct"] = self.triton.address
        for path, dataplane in (("fastpath", "haproxy"), ("python", "python")):
            self.gateway(path, dataplane)
        for path in ("translated", *(p for p in PATHS if p.startswith("plugin_")), "digits"):
            self.address[path] = self.address["python"]
            self.pid[path] = self.pid["python"]
        self.spawn("floor", "-m", "bench.floor", self.triton.address)

    def publish(self, folder: Path) -> str:
        """Pack a plugin folder, register it as the manager does; its ``name@version``."""
        data = pack(folder)
        manifest = parse_manifest((folder / "plugin.toml").read_text())
        sha = hashlib.sha256(data).hexdigest()
        blob = self.workdir / f"{sha}.zip"
        blob.write_bytes(data)
        self.registry.put(
            layout.plugin(manifest.name, manifest.version),
            Plugin(name=manifest.name, version=manifest.version, sha256=sha, size=len(data),
                   entrypoint=manifest.entrypoint, blob_url=f"file://{blob}",
                   executor=manifest.executor),
        )  # fmt: skip
        return f"{manifest.name}@{manifest.version}"


#: perf_analyzer's stability bound (%), and the one of a second try on a noisy machine.
STABILITY, NOISY_STABILITY = 50, 100


def run_perf_analyzer(
    stack: Stack, path: str, concurrency: int, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """One measurement; ``stable`` is False when it took the second, looser try (or, when
    that failed too, the numbers are None)."""
    binary, env = perf_analyzer()
    cmd = [
        str(binary), "-m", PATHS[path], "-x", "1", "-u", stack.address[path], "-i", "grpc",
        "--concurrency-range", f"{concurrency}:{concurrency}", "--shape",
        f"INPUT0:{args.elements}", "--measurement-interval", str(args.window_ms),
        "--max-trials", "10", "-f", str(out),
    ]  # fmt: skip
    if path == "translated":
        cmd += ["--service-kind", "tfserving"]
    for stability in (STABILITY, NOISY_STABILITY):
        done = subprocess.run(
            [*cmd, "--stability-percentage", str(stability)],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if done.returncode == 0 or "Failed to obtain stable measurement" not in done.stdout:
            break
        print(f"  {path} c={concurrency}: not stable within {stability}%, again", flush=True)
    if done.returncode != 0 and "Failed to obtain stable measurement" in done.stdout:
        print(f"  {path} c={concurrency}: no stable measurement; its row stays empty", flush=True)
        return {"rps": None, "p50_us": None, "p99_us": None, "stable": False}
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer on {path} failed:\n{done.stdout}\n{done.stderr}")
    with out.open() as f:
        (measured,) = list(csv.DictReader(f))
    return {
        "rps": float(measured["Inferences/Second"]),
        "p50_us": float(measured["p50 latency"]),
        "p99_us": float(measured["p99 latency"]),
        "stable": stability == STABILITY,
    }


# -- the digits rows: Invoke (PNG) through the gateway, PIXELS straight on Triton -----------


def digits_calls(stack: Stack) -> dict[str, tuple[str, bytes]]:
    """Per digits path: the gRPC method and the serialized request."""
    pixels = np.asarray(stack.digits_pixels, np.float32).reshape(1, 64)
    infer = kserve.ModelInferRequest(model_name=DIGITS)
    infer.inputs.add(name="PIXELS", datatype="FP32", shape=[1, 64])
    infer.raw_input_contents.append(pixels.tobytes())
    invoke = gateway_pb2.InvokeRequest(
        model=DIGITS, payload=render(stack.digits_pixels), content_type="image/png"
    )
    return {
        "digits_direct": ("/inference.GRPCInferenceService/ModelInfer",
                          infer.SerializeToString()),
        "digits": ("/modelgate.v1.Gateway/Invoke", invoke.SerializeToString()),
    }  # fmt: skip


async def drive(
    address: str, method: str, body: bytes, concurrency: int, seconds: float
) -> dict[str, Any]:
    """``concurrency`` callers back to back for ``seconds`` after as long a warm-up."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(method)
        measuring, stop = False, False

        async def caller() -> None:
            while not stop:
                start = time.perf_counter()
                await call(body, timeout=30)
                if measuring:
                    latencies.append(time.perf_counter() - start)

        callers = [asyncio.ensure_future(caller()) for _ in range(concurrency)]
        await asyncio.sleep(seconds)  # warm-up
        measuring, begin = True, time.perf_counter()
        await asyncio.sleep(seconds)
        measuring, stop, elapsed = False, True, time.perf_counter() - begin
        await asyncio.gather(*callers)
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "stable": True,
    }


def check_digits(stack: Stack) -> None:
    """The plugin's answer is the model's (a benchmark of wrong answers measures nothing)."""
    calls = digits_calls(stack)

    async def ask(path: str) -> bytes:
        method, body = calls[path]
        async with grpc.aio.insecure_channel(stack.address[path]) as channel:
            answer: bytes = await channel.unary_unary(method)(body, timeout=120)
            return answer

    direct = kserve.ModelInferResponse.FromString(asyncio.run(ask("digits_direct")))
    best = int(np.frombuffer(direct.raw_output_contents[0], np.float32).argmax())
    answer = json.loads(gateway_pb2.InvokeResponse.FromString(asyncio.run(ask("digits"))).payload)
    if answer["digit"] != best:
        raise RuntimeError(f"digits through the gateway answered {answer}, the model {best}")


def warm_up(stack: Stack) -> None:
    """One call per plugin model through the gateway: its plugin loaded before measuring."""
    client = triton_grpc.InferenceServerClient(stack.address["python"])
    try:
        for path in (p for p in PATHS if p.startswith("plugin_")):
            data = triton_grpc.InferInput("INPUT0", [1], "FP32")
            data.set_data_from_numpy(np.ones(1, np.float32))
            client.infer(PATHS[path], [data], client_timeout=120)
    finally:
        client.close()
    check_digits(stack)


def measure(stack: Stack, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    calls = digits_calls(stack)
    for c in args.concurrency:
        baseline: dict[str, dict[str, Any]] = {}
        for path in (*PATHS, *calls):
            pid = stack.pid.get(path)
            model = PATHS.get(path, DIGITS)
            cpu_before = tree_cpu_seconds(pid) if pid else 0.0
            calls_before = stack.inferences(model)
            if path in calls:
                method, body = calls[path]
                result = asyncio.run(
                    drive(stack.address[path], method, body, c, args.window_ms / 1000)
                )
            else:
                result = run_perf_analyzer(stack, path, c, args, stack.workdir / f"{path}-{c}.csv")
            served = stack.inferences(model) - calls_before
            cpu = tree_cpu_seconds(pid) - cpu_before if pid else None
            cpu_us = None if cpu is None or not served else round(cpu * 1e6 / served)
            against = BASELINES.get(path, "direct")
            base = baseline.get(against) if against else None
            row = {
                "path": path,
                "concurrency": c,
                "rps": None if result["rps"] is None else round(result["rps"], 1),
                "p50_us": None if result["p50_us"] is None else round(result["p50_us"]),
                "p99_us": None if result["p99_us"] is None else round(result["p99_us"]),
                "ratio": round(result["rps"] / base["rps"], 3)
                if base and base["rps"] and result["rps"] is not None
                else None,
                "proxy_cpu_us": cpu_us,
                "added_cpu_us": added_cpu(path, cpu_us, baseline),
                "stable": result["stable"],
            }
            baseline[path] = row
            rows.append(row)
            print(f"  {path:14s} c={c}: {row}", flush=True)
    return rows


def added_cpu(path: str, cpu_us: int | None, baseline: dict[str, dict[str, Any]]) -> int | None:
    """What the plugin adds per call: over ``python`` (plugin_*), or all of it (digits)."""
    if cpu_us is None:
        return None
    if path == "digits":
        return cpu_us
    python = baseline.get("python", {}).get("proxy_cpu_us")
    if path.startswith("plugin_") and python is not None:
        return cpu_us - int(python)
    return None


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'path':14s} {'conc':>4s} {'req/s':>8s} {'p50 us':>8s} {'p99 us':>8s} "
             f"{'ratio':>6s} {'proxy CPU us/call':>17s} {'added CPU us':>12s}"]  # fmt: skip

    def cell(value: Any, spec: str = "") -> str:
        return "-" if value is None else format(value, spec)

    for r in rows:
        path = r["path"] + ("" if r["stable"] else "*")  # NOTE: * = a looser stability bound
        lines.append(
            f"{path:14s} {r['concurrency']:>4d} {cell(r['rps'], '.1f'):>8s} "
            f"{cell(r['p50_us']):>8s} {cell(r['p99_us']):>8s} {cell(r['ratio'], '.2f'):>6s} "
            f"{cell(r['proxy_cpu_us']):>17s} {cell(r['added_cpu_us']):>12s}"
        )
    return "\n".join(lines)


def arguments(prog: str, doc: str, concurrency: list[int], output: Path) -> argparse.ArgumentParser:
    """The options of a perf_analyzer benchmark on this stack (bench.run, bench.workers)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=concurrency)
    parser.add_argument("--elements", type=int, default=16, help="FP32 elements per request")
    parser.add_argument(
        "--window-ms", type=int, default=3000, help="perf_analyzer measurement window"
    )
    parser.add_argument("--output", type=Path, default=output)
    return parser


def write_results(output: Path, rows: list[dict[str, Any]], generator: str, **fields: Any) -> None:
    """Print the table of ``rows`` and write them to ``output`` with when, where and how."""
    print()
    print(table(rows))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "generator": generator,
                **fields,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {output}")


def main(argv: list[str] | None = None) -> None:
    args = arguments("python -m bench", __doc__, [1, 4, 8], RESULTS / "latest.json").parse_args(
        argv
    )
    perf_analyzer()  # extract it before anything starts
    with tempfile.TemporaryDirectory(prefix="modelgate-bench-") as tmp:
        with Stack(Path(tmp)) as stack:
            print(f"stack up: {stack.address}", flush=True)
            warm_up(stack)
            rows = measure(stack, args)
    write_results(
        args.output,
        rows,
        "perf_analyzer 2.41.0 (-i grpc; translated: --service-kind tfserving); digits rows: "
        "bench.run.drive (grpc.aio)",
        model=MODEL,
        elements=args.elements,
    )


if __name__ == "__main__":
    main()
