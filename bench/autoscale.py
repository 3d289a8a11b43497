"""Autoscaling benchmark: replicas following a load ramp, and the cold start from zero.

Starts the one-machine stack (:class:`deploy.local.stack.LocalStack`: ZooKeeper, the manager,
three worker agents each launching a real Triton, one gateway) with short autoscaling periods,
and deploys with the ``modelgate`` CLI, as a user would:

- ``ramp``: an ``add_one`` model taking ``--delay-ms`` per call, ``--min-replicas 1
  --max-replicas 3 --target-in-flight 1``. ``perf_analyzer`` drives it through the gateway at
  each concurrency of ``--phases`` in turn (0: no load for ``--quiet-s``), while a sampler
  records, every half second, the replicas the manager wants (``/scale/ramp``) and the ready
  ones (``/routes/ramp``). The timeline is plotted as ``bench/results/autoscale.png``.
- ``cold``: the same model with ``--min-replicas 0 --idle-seconds 5``. ``--cold-starts`` times:
  wait until it is at zero (no replica wanted, no route), then one KServe ModelInfer through
  the gateway: call -> answer is the cold-start time (the gateway holds the call, the manager
  places a replica, a worker pulls and loads it, the route appears).

Writes ``bench/results/autoscale.json``. Run: ``.venv/bin/python -m bench.autoscale``
(``--help``); ``make bench-autoscale`` runs it and the isolation benchmark.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as kserve
from tritonclient.grpc import service_pb2_grpc as kserve_grpc

from bench.tools import perf_analyzer
from deploy.local.stack import LocalStack
from examples.models import write_add_one_artifact
from registry import Registry, layout
from registry.records import Scale

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
RAMP, COLD = "ramp", "cold"
#: The manager's autoscaling periods for this run (short, so the ramp fits in minutes).
MANAGER_SETTINGS = {
    "MODELGATE_MANAGER_LOAD_INTERVAL_S": "1",
    "MODELGATE_MANAGER_AUTOSCALE_INTERVAL_S": "1",
    "MODELGATE_MANAGER_AUTOSCALE_UP_COOLDOWN_S": "3",
    "MODELGATE_MANAGER_AUTOSCALE_DOWN_WINDOW_S": "15",
}


class Timeline:
    """Samples of (seconds since start, replicas wanted, replicas ready, load concurrency)."""

    def __init__(self, registry: Registry, model: str) -> None:
        self.registry = registry
        self.model = model
        self.start = time.monotonic()
        self.concurrency = 0
        self.samples: list[tuple[float, int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def now(self) -> tuple[int, int]:
        """Replicas wanted (the leader's ``/scale`` record) and ready (routes)."""
        scale = self.registry.read(layout.scale(self.model), Scale)
        ready = len(self.registry.children(layout.version_routes(self.model, 1)))
        return (scale.replicas if scale else -1), ready

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            wanted, ready = self.now()
            t = round(time.monotonic() - self.start, 2)
            self.samples.append((t, wanted, ready, self.concurrency))


def wait_for(check: Any, what: str, within_s: float) -> Any:
    """Poll ``check()`` every 0.2 s until it returns something truthy (bounded)."""
    deadline = time.monotonic() + within_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {what} within {within_s:g}s")
        time.sleep(0.2)
    return result


def cli(stack: LocalStack, *args: str) -> str:
    """Run the ``modelgate`` CLI against the stack."""
    env = dict(os.environ, MODELGATE_MANAGER_URL=stack.manager_url,
               MODELGATE_TOKEN=stack.admin_token)  # fmt: skip
    done = subprocess.run([str(Path(sys.executable).parent / "modelgate"), *args], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"`modelgate {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def deploy(stack: LocalStack, workdir: Path, name: str, delay_ms: int, *flags: str) -> None:
    artifact = write_add_one_artifact(workdir / name, name, delay_s=delay_ms / 1000)
    cli(stack, "models", "create", name, "--backend", "triton", *flags)
    cli(stack, "models", "deploy", name, "--uri", f"file://{artifact}")


def load_phase(
    stack: LocalStack, concurrency: int, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """``perf_analyzer`` at ``concurrency`` through the gateway for three windows."""
    binary, env = perf_analyzer()
    cmd = [
        str(binary), "-m", RAMP, "-x", "1", "-u", stack.gateway_address, "-i", "grpc",
        "--concurrency-range", f"{concurrency}:{concurrency}", "--shape", "INPUT0:16",
        "--measurement-interval", str(args.window_ms), "--max-trials", "3",
        "--stability-percentage", "1000", "-f", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(
            f"perf_analyzer at c={concurrency} failed:\n{done.stdout}\n{done.stderr}"
        )
    with out.open() as f:
        (measured,) = list(csv.DictReader(f))
    return {
        "concurrency": concurrency,
        "rps": round(float(measured["Inferences/Second"]), 1),
        "p99_us": round(float(measured["p99 latency"])),
    }


def ramp(
    stack: LocalStack, registry: Registry, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    deploy(stack, workdir, RAMP, args.delay_ms, "--min-replicas", "1", "--max-replicas", "3",
           "--target-in-flight", "1")  # fmt: skip
    wait_for(lambda: registry.children(layout.version_routes(RAMP, 1)), f"{RAMP} ready", 180)
    phases: list[dict[str, Any]] = []
    with Timeline(registry, RAMP) as timeline:
        for n, concurrency in enumerate(args.phases):
            timeline.concurrency = concurrency
            started = time.monotonic() - timeline.start
            if concurrency:
                phase = load_phase(stack, concurrency, args, workdir / f"phase-{n}.csv")
            else:
                time.sleep(args.quiet_s)
                phase = {"concurrency": 0, "rps": 0.0, "p99_us": None}
            wanted, ready = timeline.now()
            phase |= {"start_s": round(started, 1), "end_wanted": wanted, "end_ready": ready}
            print(f"  phase {n}: {phase}", flush=True)
            phases.append(phase)
    samples = timeline.samples
    return {
        "reactions": reactions(samples),
        "phases": phases,
        "max_wanted": max(s[1] for s in samples),
        "max_ready": max(s[2] for s in samples),
        "final_wanted": samples[-1][1],
        "final_ready": samples[-1][2],
        "timeline": samples,
    }


def reactions(samples: list[tuple[float, int, int, int]]) -> list[dict[str, Any]]:
    """Per change of the load: the ready replicas it settled at (those at the end of the
    phase) and the seconds until they got there for good."""
    out: list[dict[str, Any]] = []
    changes = [i for i in range(1, len(samples)) if samples[i][3] != samples[i - 1][3]]
    for n, i in enumerate(changes):
        end = changes[n + 1] if n + 1 < len(changes) else len(samples)
        phase = samples[i:end]
        settled = phase[-1][2]
        first = len(phase) - 1
        while first > 0 and phase[first - 1][2] == settled:
            first -= 1
        out.append({"load": f"{samples[i - 1][3]} -> {samples[i][3]}", "ready": settled,
                    "after_s": round(phase[first][0] - samples[i][0], 1)})  # fmt: skip
    return out


def infer_once(address: str, model: str, timeout_s: float) -> float:
    """One ModelInfer through the gateway; seconds from call to answer."""
    request = kserve.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[4])
    request.raw_input_contents.append(np.zeros(4, np.float32).tobytes())
    with grpc.insecure_channel(address) as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        start = time.monotonic()
        stub.ModelInfer(request, timeout=timeout_s)
        return time.monotonic() - start


def cold_starts(
    stack: LocalStack, registry: Registry, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    deploy(stack, workdir, COLD, 0, "--min-replicas", "0", "--max-replicas", "1",
           "--idle-seconds", "5")  # fmt: skip
    timeline = Timeline(registry, COLD)
    seconds: list[float] = []
    for n in range(args.cold_starts):
        wait_for(lambda: timeline.now() == (0, 0), f"{COLD} at zero", 180)
        seconds.append(infer_once(stack.gateway_address, COLD, 120))
        print(f"  cold start {n + 1}: {seconds[-1]:.2f} s", flush=True)
    return {
        "cold_start_s": [round(s, 3) for s in seconds],
        "median_s": round(statistics.median(seconds), 3),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    t, wanted, ready, load = zip(*result["timeline"], strict=True)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.step(t, load, where="post", label="load (concurrent callers)", color="0.7")
    ax.step(t, wanted, where="post", label="replicas wanted", linewidth=2)
    ax.step(t, ready, where="post", label="replicas ready", linestyle="--")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("seconds")
    ax.set_ylabel("count")
    ax.set_title("modelgate autoscaling: ramp (target 1 call in flight per replica)")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.autoscale", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--phases", type=int, nargs="+", default=[1, 2, 3, 6, 0],
                        help="load concurrency per phase; 0: no load for --quiet-s")  # fmt: skip
    parser.add_argument("--window-ms", type=int, default=10000, help="perf_analyzer window")
    parser.add_argument("--quiet-s", type=float, default=45.0)
    parser.add_argument("--delay-ms", type=int, default=50, help="time the model takes per call")
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "autoscale.json")
    args = parser.parse_args(argv)
    perf_analyzer()  # extract it before anything starts
    with tempfile.TemporaryDirectory(prefix="modelgate-bench-autoscale-") as tmp:
        workdir = Path(tmp)
        stack = LocalStack(
            run_dir=workdir / "run", zk_port=None, gateway_port=0, gateway_metrics_port=0,
            manager_port=0, triton_ports=(0, 0, 0), worker_status_ports=(0, 0, 0),
            log_level="WARNING", settings_env={"manager": MANAGER_SETTINGS},
        )  # fmt: skip
        with stack:
            registry = Registry(stack.zk_hosts, stack.zk_root).start()
            try:
                print(f"stack up: gateway {stack.gateway_address}", flush=True)
                result = {"ramp": ramp(stack, registry, args, workdir),
                          "cold": cold_starts(stack, registry, args, workdir)}  # fmt: skip
            finally:
                registry.stop()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    picture = args.output.with_suffix(".png")
    plot(result["ramp"], picture)
    args.output.write_text(
        json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "generator": "perf_analyzer 2.41.0 (-i grpc) through the gateway",
                "delay_ms": args.delay_ms,
                "manager_settings": MANAGER_SETTINGS,
                **result,
            },
            indent=2,
        )
        + "\n"
    )
    ends = [(p["concurrency"], p["end_wanted"], p["end_ready"]) for p in result["ramp"]["phases"]]
    print(f"\nramp (concurrency, replicas wanted, ready at the end of each phase): {ends}")
    print(f"reactions: {result['ramp']['reactions']}")
    print(f"cold start: {result['cold']['cold_start_s']} s (median {result['cold']['median_s']})")
    print(f"wrote {args.output} and {picture}")


if __name__ == "__main__":
    main()
