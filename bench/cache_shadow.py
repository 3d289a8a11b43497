"""Figures of the response cache and shadow traffic from a real run.

Starts a real ZooKeeper, Triton (``fig_add`` versions 1 (+1) and 2 (+10), and ``fig_twin``, a
copy of version 1) and a gateway (``--dataplane python``: cached and shadowed models take the
Python path anyway). Then, calling ``fig_add`` version 1 over KServe ``ModelInfer``:

- cache: ``--calls`` distinct inputs, each twice in a row, with ``cache: {ttl_s: 300}`` (the
  first call misses, the second hits); the client-side latency of misses and hits, the
  gateway's hit/miss counts and Triton's inference count;
- shadow: ``--calls`` calls with the cache off and ``shadow`` to version 2 (exact match: they
  disagree), then to ``fig_twin`` (they agree), at ``--percent``.

Prints the figures as JSON. Run: ``.venv/bin/python -m bench.cache_shadow`` (``--help``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import BenchStack
from examples.models import write_add_one
from registry import layout
from registry.records import Model

MODEL, TWIN, ROOT = "fig_add", "fig_twin", "/figures"


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(("modelgate_gateway_cache", "modelgate_gateway_shadow"))
        and not s.name.endswith(("_bucket", "_created"))
    }


def series(key: tuple[str, tuple[tuple[str, str], ...]]) -> str:
    """A sample's key as Prometheus writes it: ``name{label="value",...}``."""
    name, labels = key
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def timed_calls(client: triton_grpc.InferenceServerClient, values: range) -> list[float]:
    """Milliseconds per call of ``fig_add`` version 1 with input ``[v]`` for each value."""
    out = []
    for value in values:
        x = triton_grpc.InferInput("INPUT0", [1], "FP32")
        x.set_data_from_numpy(np.array([value], dtype=np.float32))
        start = time.perf_counter()
        result = client.infer(MODEL, [x], model_version="1", client_timeout=20)
        out.append((time.perf_counter() - start) * 1000)
        assert result.as_numpy("OUTPUT0").tolist() == [value + 1.0]
    return out


def summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 3)}  # fmt: skip


def wait_until(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def run(workdir: Path, calls: int, percent: float) -> dict[str, Any]:
    with BenchStack(workdir, ROOT, "fig") as stack:
        for version, inc in ((1, 1.0), (2, 10.0)):
            folder = write_add_one(stack.triton.model_repository, MODEL, version, inc)
        config = folder / "config.pbtxt"
        config.write_text(config.read_text() + "version_policy: { all { } }\n")
        write_add_one(stack.triton.model_repository, TWIN, 1, 1.0)
        stack.start_triton((MODEL, TWIN))
        stack.route(Model(name=MODEL, backend="triton"), (1, 2))
        stack.route(Model(name=TWIN, backend="triton"))
        gateway = stack.gateway("gateway", "python")
        address, metrics_port = f"127.0.0.1:{gateway.port('grpc')}", gateway.port("metrics")
        client = triton_grpc.InferenceServerClient(address)

        def set_model(**fields: Any) -> None:
            stack.registry.put(layout.model(MODEL), Model(name=MODEL, backend="triton", **fields))

        def counted(name: str, **labels: str) -> float:
            """A counter's value (0 before its first count)."""
            key = (f"modelgate_gateway_{name}_total", tuple(sorted(labels.items())))
            return metrics(metrics_port).get(key, 0.0)

        def probed(name: str, **labels: str) -> bool:
            """Whether a probe call (input -1, outside the measured ones) counts ``name``."""
            timed_calls(client, range(-1, 0))
            return counted(name, **labels) > 0

        # -- cache
        set_model(cache={"ttl_s": 300})
        wait_until(lambda: probed("cache_lookups", model=MODEL, outcome="miss"),
                   "the cache on in the gateway")  # fmt: skip
        before = stack.inferences(MODEL)
        misses, hits = [], []
        for value in range(1, calls + 1):  # interleaved: both see the same machine load
            misses += timed_calls(client, range(value, value + 1))
            hits += timed_calls(client, range(value, value + 1))
        cache = {
            "calls": 2 * calls,
            "miss": summary(misses),
            "hit": summary(hits),
            "triton_inferences": stack.inferences(MODEL) - before,
            "metrics": {series(k): v for k, v in metrics(metrics_port).items()
                        if k[0].startswith("modelgate_gateway_cache")},
        }  # fmt: skip

        def answered(target: str) -> float:
            """Shadow copies to ``target`` that agreed, disagreed or failed."""
            return sum(v for (n, lab), v in metrics(metrics_port).items()
                       if n in ("modelgate_gateway_shadow_agreement_total",
                                "modelgate_gateway_shadow_errors_total")
                       and dict(lab).get("target") == target)  # fmt: skip

        def settle(target: str) -> None:
            """Wait until every copy sent to ``target`` has been answered (or failed)."""
            sent = counted("shadow_calls", model=MODEL, target=target)
            wait_until(lambda: answered(target) >= sent, f"the copies to {target} answered")

        # -- shadow
        shadow: dict[str, Any] = {}
        for target in (2, TWIN):
            set_model(shadow={"target": target, "percent": percent})
            label = str(target)
            wait_until(lambda t=label: probed("shadow_calls", model=MODEL, target=t),
                       f"shadow to {target} in the gateway")  # fmt: skip
            settle(label)
            start = metrics(metrics_port)
            primary = timed_calls(client, range(1000, 1000 + calls))
            settle(label)
            end = metrics(metrics_port)
            shadow[f"target {target}"] = {
                "calls": calls,
                "primary": summary(primary),
                "metrics": {series(k): v - start.get(k, 0.0) for k, v in end.items()
                            if k[0].startswith("modelgate_gateway_shadow")
                            and dict(k[1]).get("target") == str(target)},
            }  # fmt: skip
        client.close()
        return {"cache": cache, "shadow": shadow}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per phase")
    parser.add_argument("--percent", type=float, default=50.0, help="shadow percent")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modelgate-figures-") as tmp:
        print(json.dumps(run(Path(tmp), args.calls, args.percent), indent=2))


if __name__ == "__main__":
    main()
