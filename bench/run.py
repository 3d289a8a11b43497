"""Benchmark: the same model directly at Triton and through the gateway, in one run.

Starts a real ZooKeeper, a worker agent that launches Triton (or, with
``--no-worker-agent``, Triton directly plus a route written by hand), and the gateway
(``python -m gateway``, a separate process so its CPU time can be read from /proc). Then
drives KServe ModelInfer directly at Triton, the same call through the gateway
(passthrough), and a TF-Serving Predict through the gateway (translated to KServe), at
each concurrency. Prints a table and writes ``bench/results/latest.json``.

Run: ``.venv/bin/python -m bench`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as kserve

from bench.loadgen import Result, drive
from examples.models import write_add_one, write_add_one_artifact
from protos.tfs.tensorflow.core.framework import tensor_pb2, types_pb2
from protos.tfs.tensorflow_serving.apis import predict_pb2
from registry import Registry, layout
from registry.local_zookeeper import LocalZooKeeper
from registry.records import Assignment, Model, ModelVersion, Route

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MODEL = "bench_add"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def write_artifact(root: Path) -> Path:
    return write_add_one_artifact(root / "artifact", MODEL)


def wait_line(proc: subprocess.Popen[str], prefix: str, what: str, timeout: float = 120) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
    raise RuntimeError(f"{what} did not print {prefix!r} within {timeout:g}s")


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


class Stack:
    """ZooKeeper + (worker agent + Triton | Triton) + gateway, torn down in reverse."""

    def __init__(self, workdir: Path, use_agent: bool) -> None:
        self.workdir = workdir
        self.use_agent = use_agent
        self.procs: list[subprocess.Popen[str]] = []
        self.triton: Any = None
        self.zk = LocalZooKeeper(workdir / "zk")
        self.registry: Registry | None = None
        self.backend_address = ""
        self.gateway_address = ""
        self.gateway_pid = 0
        self.mode = ""

    def spawn(self, *args: str, log: str) -> subprocess.Popen[str]:
        logf = (self.workdir / log).open("w")
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=logf, text=True
        )
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        self.zk.start()
        self.registry = Registry(self.zk.hosts, "/bench").start()
        reg = self.registry
        artifact = write_artifact(self.workdir)
        reg.put(layout.model(MODEL), Model(name=MODEL, backend="triton"))
        reg.put(
            layout.version(MODEL, 1),
            ModelVersion(version=1, artifact_uri=artifact.as_uri(), labels=["stable"]),
        )
        if self.use_agent:
            try:
                self._start_agent(reg, artifact)
                self.mode = "worker agent"
            except Exception as err:  # NOTE: the agent is optional for the figures
                print(f"worker agent did not publish a route ({err}); starting Triton directly")
                self.use_agent = False
        if not self.use_agent:
            self._start_triton(reg)
            self.mode = "direct route"
        gw = self.spawn(
            "-m", "gateway", "--zk", self.zk.hosts, "--root", "/bench", "--host", "127.0.0.1",
            "--port", "0", "--metrics-port", "0", "--gateway-id", "bench-gateway",
            "--log-level", "WARNING", log="gateway.log",
        )  # fmt: skip
        port = int(wait_line(gw, "GATEWAY LISTENING", "gateway").split()[2])
        self.gateway_address = f"127.0.0.1:{port}"
        self.gateway_pid = gw.pid

    def _start_agent(self, reg: Registry, artifact: Path) -> None:
        agent = self.spawn(
            "-m", "worker_agent", "--zk", self.zk.hosts, "--root", "/bench",
            "--worker-id", "bench-worker", "--backend", "triton", "--launch-triton",
            "--triton-grpc-port", "0", "--launch-host", "127.0.0.1",
            "--advertise-host", "127.0.0.1", "--model-root", str(self.workdir / "models"),
            "--status-port", "0", "--log-level", "WARNING", log="worker_agent.log",
        )  # fmt: skip
        wait_line(agent, "READY", "worker agent")
        reg.put(
            layout.assignment("bench-worker", MODEL, 1),
            Assignment(model=MODEL, version=1, backend="triton", artifact_uri=artifact.as_uri()),
        )
        route = wait_for(
            lambda: reg.read(layout.route(MODEL, 1, "bench-worker"), Route),
            120,
            "the worker agent's route",
        )
        self.backend_address = route.address

    def _start_triton(self, reg: Registry) -> None:
        from worker_agent.tritonserver import TritonServer

        repo = self.workdir / "triton-models"
        write_add_one(repo, MODEL)
        self.triton = TritonServer(repo, self.workdir / "triton")
        self.triton.start()
        import tritonclient.grpc as triton_grpc

        client = triton_grpc.InferenceServerClient(self.triton.address)
        client.load_model(MODEL)
        client.close()
        self.backend_address = self.triton.address
        reg.put(
            layout.route(MODEL, 1, "bench-triton"),
            Route(model=MODEL, version=1, worker_id="bench-triton",
                  address=self.backend_address, protocol="kserve"),
        )  # fmt: skip

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.triton is not None:
            self.triton.stop()
        if self.registry is not None:
            self.registry.stop()
        self.zk.stop()


def payloads(elements: int) -> tuple[bytes, bytes]:
    x = np.arange(elements, dtype=np.float32)
    infer = kserve.ModelInferRequest(model_name=MODEL)
    infer.inputs.add(name="INPUT0", datatype="FP32", shape=[elements])
    infer.raw_input_contents.append(x.tobytes())
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = MODEL
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=x.tobytes())
    tensor.tensor_shape.dim.add(size=elements)
    predict.inputs["INPUT0"].CopyFrom(tensor)
    return infer.SerializeToString(), predict.SerializeToString()


def row(path: str, concurrency: int, result: Result, cpu_us: float | None) -> dict[str, Any]:
    return {
        "path": path,
        "concurrency": concurrency,
        "calls": result.calls,
        "errors": result.errors,
        "throughput_rps": round(result.throughput, 1),
        "p50_ms": round(result.percentile(50) * 1000, 3),
        "p99_ms": round(result.percentile(99) * 1000, 3),
        "gateway_cpu_us_per_request": None if cpu_us is None else round(cpu_us, 1),
    }


async def measure(stack: Stack, args: argparse.Namespace) -> list[dict[str, Any]]:
    infer, predict = payloads(args.elements)
    infer_method = "/inference.GRPCInferenceService/ModelInfer"
    predict_method = "/tensorflow.serving.PredictionService/Predict"
    rows = []
    for c in args.concurrency:
        runs = [
            ("direct (KServe -> Triton)", stack.backend_address, infer_method, infer, False),
            ("gateway (KServe passthrough)", stack.gateway_address, infer_method, infer, True),
            ("gateway (TF Predict -> Triton)", stack.gateway_address, predict_method, predict,
             True),
        ]  # fmt: skip
        for name, address, method, payload, via_gateway in runs:
            before = [0.0]

            def start(before: list[float] = before) -> None:
                before[0] = cpu_seconds(stack.gateway_pid)

            result = await drive(
                address, method, payload, concurrency=c, requests=args.requests,
                duration=args.duration, on_start=start,
            )  # fmt: skip
            cpu = cpu_seconds(stack.gateway_pid) - before[0]
            cpu_us = cpu * 1e6 / result.calls if via_gateway and result.calls else None
            rows.append(row(name, c, result, cpu_us))
            print(f"  {name:32s} c={c}: {result.calls} calls, {result.errors} errors")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    direct = {r["concurrency"]: r for r in rows if r["path"].startswith("direct")}
    lines = [
        f"{'path':32s} {'conc':>4s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
        f"{'ratio':>6s} {'gw CPU us/req':>13s}"
    ]
    for r in rows:
        base = direct[r["concurrency"]]["throughput_rps"]
        r["throughput_ratio_vs_direct"] = round(r["throughput_rps"] / base, 3) if base else None
        cpu = r["gateway_cpu_us_per_request"]
        lines.append(
            f"{r['path']:32s} {r['concurrency']:>4d} {r['throughput_rps']:>8.1f} "
            f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['throughput_ratio_vs_direct']:>6.2f} "
            f"{'-' if cpu is None else f'{cpu:.0f}':>13s}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=3000, help="calls per run (max)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (max)")
    parser.add_argument("--elements", type=int, default=16, help="FP32 elements per request")
    parser.add_argument("--no-worker-agent", action="store_true", help="write the route by hand")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("registry").setLevel(logging.ERROR)  # our own session's teardown

    with tempfile.TemporaryDirectory(prefix="modelgate-bench-") as tmp:
        stack = Stack(Path(tmp), use_agent=not args.no_worker_agent)
        try:
            stack.start()
            print(f"stack up ({stack.mode}): triton {stack.backend_address}, "
                  f"gateway {stack.gateway_address}")  # fmt: skip
            rows = asyncio.run(measure(stack, args))
        finally:
            stack.stop()
    text = table(rows)
    print()
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "mode": stack.mode,
                "model": MODEL,
                "elements": args.elements,
                "requests_per_run": args.requests,
                "duration_limit_s": args.duration,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
