"""``make demo``: the digits example end to end on the one-machine stack.

1. Start the local stack (ZooKeeper, manager, two worker agents each with its own Triton,
   a gateway).
2. Train the digits classifier (scikit-learn's bundled 8x8 digits, no download) and package
   it as a Triton Python-backend model archive.
3. With the ``modelgate`` CLI: push the digits plugin, create the model with it, deploy the
   archive to 2 replicas, wait until both are ready.
4. Call it through the gateway three ways: ``Invoke`` with a PNG file (CLI ``modelgate
   infer``), tritonclient's KServe ``ModelInfer`` on the model's own tensor, and a
   TF-Serving ``Predict`` stub (the gateway translates to the Triton backend).
5. A burst of ``Invoke`` calls, killing one Triton server in the middle: every call must
   still succeed (the gateway fails over to the other replica).
6. Print a summary table and an excerpt of the gateway's metrics; stop the stack.

Exit code 0 only if every step worked and no call failed. Run with
``.venv/bin/python deploy/local/demo.py`` (``--any-ports`` to pick free ports).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: `python deploy/local/demo.py`
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tritonclient.grpc as triton_grpc  # noqa: E402

from deploy.local.leftovers import stack_pids  # noqa: E402
from deploy.local.stack import LocalStack, StackError  # noqa: E402
from examples.digits import train  # noqa: E402
from examples.digits.images import render  # noqa: E402
from protos.modelgate.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: E402
from protos.tfs.tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from protos.tfs.tensorflow_serving.apis import (  # noqa: E402
    predict_pb2,
    prediction_service_pb2_grpc,
)

MODEL = "digits"
PLUGIN_DIR = REPO / "examples" / "digits" / "plugin"
BURST_CALLS = 400
BURST_CONCURRENCY = 8
KILL_AFTER = 100


class DemoError(RuntimeError):
    pass


@dataclass
class Calls:
    """Outcome of one kind of call: latencies of successes, and failures."""

    name: str
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    correct: int = 0

    def row(self) -> str:
        n = len(self.latencies) + len(self.failures)
        lat = np.asarray(self.latencies or [0.0]) * 1000
        return (
            f"  {self.name:<34} {n:>6} {len(self.failures):>9} {self.correct:>8}"
            f" {np.percentile(lat, 50):>9.1f} {np.percentile(lat, 99):>9.1f}"
        )


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def cli(stack: LocalStack, *args: str) -> str:
    """Run the ``modelgate`` CLI against the stack; fail the demo with its message."""
    env = dict(
        os.environ,
        MODELGATE_MANAGER_URL=stack.manager_url,
        MODELGATE_TOKEN=stack.admin_token,
        MODELGATE_GATEWAY=stack.gateway_address,
    )
    command = [str(Path(sys.executable).parent / "modelgate"), *args]
    print("$ modelgate " + " ".join(args), flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if done.stdout.strip():
        print(done.stdout.rstrip(), flush=True)
    if done.returncode != 0:
        raise DemoError(f"`modelgate {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def wait_ready(stack: LocalStack, replicas: int, timeout: float = 180.0) -> None:
    """Until the gateway lists ``replicas`` ready instances of the model."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(stack.gateway_address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        while time.monotonic() < deadline:
            models = stub.ListModels(gateway_pb2.ListModelsRequest(), timeout=5).models
            ready = {m.name: m.ready_instances for m in models}.get(MODEL, 0)
            if ready >= replicas:
                print(f"{MODEL}: {ready}/{replicas} replicas ready in the gateway", flush=True)
                return
            time.sleep(0.5)
    raise DemoError(f"{MODEL} did not get {replicas} ready replicas within {timeout:g}s")


def invoke_by_cli(stack: LocalStack, images: list[tuple[bytes, int]], workdir: Path) -> Calls:
    calls = Calls("Invoke, PNG file (modelgate infer)")
    for i, (png, label) in enumerate(images):
        path = workdir / f"digit-{i}.png"
        path.write_bytes(png)
        start = time.perf_counter()
        out = cli(stack, "infer", MODEL, "--file", str(path), "--content-type", "image/png",
                  "--json")  # fmt: skip
        calls.latencies.append(time.perf_counter() - start)
        answer = json.loads(out)
        payload = answer.get("payload", answer)
        if isinstance(payload, str):
            payload = json.loads(payload)
        calls.correct += int(payload["digit"] == label)
    return calls


def kserve_infer(stack: LocalStack, samples: list[tuple[np.ndarray, int]]) -> Calls:
    calls = Calls("KServe ModelInfer (tritonclient)")
    client = triton_grpc.InferenceServerClient(stack.gateway_address)
    try:
        for pixels, label in samples:
            x = triton_grpc.InferInput("PIXELS", [1, 64], "FP32")
            x.set_data_from_numpy(pixels.reshape(1, 64).astype(np.float32))
            start = time.perf_counter()
            try:
                result = client.infer(MODEL, [x], client_timeout=30)
            except Exception as err:
                calls.failures.append(str(err))
                continue
            calls.latencies.append(time.perf_counter() - start)
            calls.correct += int(result.as_numpy("PROBABILITIES")[0].argmax() == label)
    finally:
        client.close()
    return calls


def tfserving_predict(stack: LocalStack, samples: list[tuple[np.ndarray, int]]) -> Calls:
    calls = Calls("TF-Serving Predict (translated)")
    with grpc.insecure_channel(stack.gateway_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for pixels, label in samples:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL
            tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
            tensor.tensor_shape.dim.add(size=1)
            tensor.tensor_shape.dim.add(size=64)
            tensor.float_val.extend(pixels.astype(float).tolist())
            request.inputs["PIXELS"].CopyFrom(tensor)
            start = time.perf_counter()
            try:
                response = stub.Predict(request, timeout=30)
            except grpc.RpcError as err:
                calls.failures.append(f"{err.code().name}: {err.details()}")
                continue
            calls.latencies.append(time.perf_counter() - start)
            out = response.outputs["PROBABILITIES"]
            probabilities = np.frombuffer(out.tensor_content, np.float32) if out.tensor_content \
                else np.asarray(out.float_val)  # fmt: skip
            calls.correct += int(probabilities.argmax() == label)
    return calls


async def burst(stack: LocalStack, images: list[tuple[bytes, int]]) -> tuple[Calls, str]:
    """``BURST_CALLS`` Invoke calls, ``BURST_CONCURRENCY`` at a time; one Triton is killed
    after ``KILL_AFTER`` answers."""
    calls = Calls(f"Invoke burst, Triton killed at {KILL_AFTER}")
    killed = ""
    queue: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
    for i in range(BURST_CALLS):
        queue.put_nowait(images[i % len(images)])

    async with grpc.aio.insecure_channel(stack.gateway_address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)

        async def caller() -> None:
            nonlocal killed
            while not queue.empty():
                png, label = queue.get_nowait()
                start = time.perf_counter()
                try:
                    answer = await stub.Invoke(
                        gateway_pb2.InvokeRequest(
                            model=MODEL, payload=png, content_type="image/png"
                        ),
                        timeout=30,
                    )
                except grpc.RpcError as err:  # fmt: skip
                    calls.failures.append(f"{err.code().name}: {err.details()}")
                    continue
                calls.latencies.append(time.perf_counter() - start)
                calls.correct += int(json.loads(answer.payload)["digit"] == label)
                if len(calls.latencies) == KILL_AFTER and not killed:
                    pid = stack.triton_pid(0)
                    if pid is None:
                        raise DemoError("could not find worker-1's tritonserver to kill")
                    os.kill(pid, signal.SIGKILL)
                    killed = f"killed tritonserver pid {pid} (worker-1) after {KILL_AFTER} calls"
                    print(killed, flush=True)

        await asyncio.gather(*(caller() for _ in range(BURST_CONCURRENCY)))
    if not killed:
        raise DemoError("the burst ended before a Triton server was killed")
    return calls, killed


def metrics_excerpt(stack: LocalStack) -> str:
    with urllib.request.urlopen(stack.gateway_metrics_url, timeout=5) as response:
        text = response.read().decode()
    keep = (
        "modelgate_gateway_requests_total",
        "modelgate_gateway_retries_total",
        "modelgate_gateway_ejections_total",
        "modelgate_gateway_routes{",
        "modelgate_gateway_plugin_seconds_count",
        "modelgate_gateway_plugin_loads_total",
    )
    lines = [line for line in text.splitlines() if line.startswith(keep)]
    return "\n".join("  " + line for line in lines if "requests_total" not in line or MODEL in line)


def run(stack: LocalStack, workdir: Path) -> list[Calls]:
    step("training the digits classifier (scikit-learn's bundled 8x8 digits)")
    x_train, x_test, y_train, y_test = train.split()
    weights = train.train(x_train, y_train)
    accuracy = train.accuracy(weights, x_test, y_test)
    archive = train.write_archive(weights, workdir / "digits-1.tar.gz")
    print(f"held-out accuracy {accuracy:.3f} on {len(y_test)} images; model archive {archive}")

    step("deploying with the modelgate CLI: plugin, model, version on 2 replicas")
    cli(stack, "plugins", "push", str(PLUGIN_DIR))
    cli(stack, "models", "create", MODEL, "--backend", "triton", "--replicas", "2",
        "--plugin", "digits@1.0.0")  # fmt: skip
    cli(stack, "models", "deploy", MODEL, "--file", str(archive), "--label", "stable")
    wait_ready(stack, replicas=2)
    cli(stack, "models", "status", MODEL)

    held_out = [(x_test[i], int(y_test[i])) for i in range(len(y_test))]
    pngs = [(render(pixels), label) for pixels, label in held_out]

    step("calling it through the gateway: Invoke (image), KServe ModelInfer, TF-Serving Predict")
    results = [
        invoke_by_cli(stack, pngs[:3], workdir),
        kserve_infer(stack, held_out[:50]),
        tfserving_predict(stack, held_out[:50]),
    ]
    step(f"a burst of {BURST_CALLS} Invoke calls; one Triton server is killed in the middle")
    burst_calls, _ = asyncio.run(burst(stack, pngs))
    results.append(burst_calls)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deploy/local/demo.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--run-dir", type=Path, default=REPO / ".run" / "demo")
    parser.add_argument(
        "--any-ports", action="store_true", help="let every process pick a free port (tests)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ports: dict[str, object] = {}
    if args.any_ports:
        ports = dict(zk_port=None, gateway_port=0, gateway_metrics_port=0, manager_port=0,
                     triton_ports=(0, 0), worker_status_ports=(0, 0))  # fmt: skip
    stack = LocalStack(run_dir=args.run_dir, log_level="WARNING", **ports)  # type: ignore[arg-type]
    code = 1
    results: list[Calls] = []
    excerpt = ""
    try:
        step(f"starting the local stack (logs in {stack.log_dir})")
        stack.start()
        print(f"gateway {stack.gateway_address}, manager {stack.manager_url}", flush=True)
        with tempfile.TemporaryDirectory(prefix="modelgate-demo-") as tmp:
            results = run(stack, Path(tmp))
        excerpt = metrics_excerpt(stack)
        failed = sum(len(r.failures) for r in results)
        code = 0 if failed == 0 else 1
    except (DemoError, StackError) as err:
        print(f"\nDEMO FAILED: {err}", file=sys.stderr, flush=True)
    finally:
        step("stopping the local stack")
        stack.stop()
        left = stack_pids(stack.run_dir)
        if left:
            print(f"ERROR: processes left running: {left}", file=sys.stderr)
            code = 1
    if results:
        print("\nSummary (latency in ms, through the gateway)")
        print(f"  {'calls':<34} {'total':>6} {'failures':>9} {'correct':>8} {'p50':>9} {'p99':>9}")
        for calls in results:
            print(calls.row())
            for failure in calls.failures[:3]:
                print(f"      failure: {failure}")
        print(f"\nGateway metrics (excerpt)\n{excerpt}")
    print(f"\ndemo {'succeeded' if code == 0 else 'FAILED'}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
