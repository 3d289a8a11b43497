"""Scale benchmark: the control plane of a fleet of N models x R replicas on W workers.

Per fleet size: a real ZooKeeper, the real manager (``python -m manager_api``), W simulated
workers (:mod:`bench.scale.workers`: the real worker agent, an instant model server) and the
models created through the manager's REST API. Then, per data plane (``--dataplane haproxy``
and ``python``), a real gateway is started cold and measured:

- ``table_build_s``: gateway start to a complete table (every model routable with R instances,
  and in haproxy mode the route map programmed), minus the same start on an empty fleet
  (interpreter and imports);
- ``route_update_p50_ms``/``p99``: a route created (or deleted) in ZooKeeper -> the gateway's
  Python path answers ModelReady accordingly, under ``--churn-rate`` changes/s for ``--churn-s``;
- ``loop_stall_max_ms``: ``modelgate_gateway_loop_stall_max_seconds`` during the churn (null if
  the gateway does not export it), with the CPU its loop thread (``loop_stall_loop_cpu_ms``)
  and its whole process (``loop_stall_process_cpu_ms``) used during that stall;
- ``gateway_rss_mb``: the gateway process after the churn (HAProxy's is ``haproxy_rss_mb``);
- with ``--zk-ensemble 3``: the models live in a 3-server ZooKeeper ensemble, and its leader is
  SIGKILLed halfway through each churn (``zk_reelection_s``: kill to a new leader; the member
  is restarted after); ``gateway_call_failures`` counts the churn's probes that failed;
- ``replace_worker_s``: SIGKILL of a worker -> every replica it held placed elsewhere and
  routable in the gateway (includes the session timeout, ``--session-timeout-s``);

and once per size, for the manager: ``reconcile_pass_s`` (mean of steady-state passes, from
``modelgate_manager_reconcile_seconds``) and ``status_api_ms`` (p99 of
``GET /v1/models/<m>/status``). Prints a table and writes ``bench/results/scale.json``. Run:
``.venv/bin/python -m bench.scale --models 1000 3000 10000`` (``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2

from bench.scale.workers import hang_up
from deploy.local.runner import Process, stop_all
from deploy.local.zookeeper import LocalEnsemble, LocalZooKeeper, four_letter
from gateway.dataplane.config import Layout
from gateway.dataplane.runtime import RuntimeApi
from gateway.looplag import WINDOW_S as STALL_WINDOW_S
from registry import EphemeralNode, Registry, TreeEvent, layout
from registry.records import Route, Worker

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
ROOT = "/scale"
EMPTY_ROOT = "/scale-empty"
MODES = ("haproxy", "python")
#: The group the manager creates at its first start.
GROUP = "default"
CHURN_WORKER = "bench-churn"
#: Never read: simulated workers pull nothing (bench/scale/backend.py).
ARTIFACT_URI = "file:///modelgate-bench/simulated-model"
#: Models with no replicas: the churn adds and removes their (only) route, each in turn (a
#: model whose last change is not visible yet is skipped, so a slow gateway slows the churn).
CHURN_MODELS = 50
FIELDS = (
    "models", "replicas", "workers", "zk_nodes", "table_build_s", "route_update_p50_ms",
    "route_update_p99_ms", "loop_stall_max_ms", "gateway_rss_mb", "reconcile_pass_s",
    "replace_worker_s", "status_api_ms",
)  # fmt: skip


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def metric_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text -> sample name -> [(labels, value)]."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


async def wait_until(check: Callable[[], Awaitable[Any]], what: str, within_s: float) -> Any:
    """Poll ``check`` every 50 ms until it returns something truthy (bounded)."""
    deadline = time.monotonic() + within_s
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {what} within {within_s:g}s")
        await asyncio.sleep(0.05)
    return result


@dataclass
class RouteView:
    """The bench's own TreeCache of ``/routes``: route owners per (model, version)."""

    owners: dict[tuple[str, int], set[str]] = field(default_factory=lambda: defaultdict(set))
    #: When this session saw each change of the churn's routes (perf_counter), per model.
    churn_seen: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, event: TreeEvent) -> None:
        parts = (event.path or "").strip("/").split("/")
        if len(parts) != 4 or not parts[2].isdigit():  # routes/<model>/<v>/<worker>
            return
        key = (parts[1], int(parts[2]))
        with self.lock:
            if event.kind == "added":
                self.owners[key].add(parts[3])
            elif event.kind == "removed":
                self.owners[key].discard(parts[3])
            if parts[3] == CHURN_WORKER and event.kind in ("added", "removed"):
                self.churn_seen[parts[1]].append(time.perf_counter())

    def forget_churn(self) -> None:
        with self.lock:
            self.churn_seen.clear()

    def churn_watch_latencies(self, began: list[tuple[str, float]]) -> list[float]:
        """Seconds from each churn change's start (``began``: model, perf_counter, in order)
        to this session seeing it: a model's n-th change is its n-th event."""
        by_model: dict[str, list[float]] = defaultdict(list)
        for model, since in began:
            by_model[model].append(since)
        with self.lock:
            return [
                seen - since
                for model, starts in by_model.items()
                for since, seen in zip(starts, self.churn_seen.get(model, ()), strict=False)
            ]

    def count(self) -> int:
        with self.lock:
            return sum(len(o) for o in self.owners.values())

    def of(self, key: tuple[str, int]) -> set[str]:
        with self.lock:
            return set(self.owners.get(key, ()))


class Fleet:
    """ZooKeeper, the manager, the simulated workers and the models of one size."""

    def __init__(self, workdir: Path, args: argparse.Namespace, models: int) -> None:
        self.workdir = workdir
        self.args = args
        self.models = [f"m{i:05d}" for i in range(models)]
        self.churn_models = [f"churn-{i:02d}" for i in range(CHURN_MODELS)]
        self.zk: LocalZooKeeper | LocalEnsemble = (
            LocalEnsemble(workdir / "zk", size=args.zk_ensemble, heap_mb=args.zk_heap_mb)
            if args.zk_ensemble > 1
            else LocalZooKeeper(workdir / "zk", heap_mb=args.zk_heap_mb)
        )
        self.procs: list[Process] = []
        self.registry: Registry | None = None
        self.routes = RouteView()
        self.token = secrets.token_hex(16)
        self.manager_url = ""
        worker_ids = [f"sim-{i:03d}" for i in range(args.workers)]
        #: One worker per data plane, each alone in its process (it is SIGKILLed).
        self.victims: dict[str, tuple[str, Process]] = {}
        groups = [[w] for w in worker_ids[: len(args.modes)]]
        rest = worker_ids[len(args.modes) :]
        step = args.agents_per_process
        groups += [rest[i : i + step] for i in range(0, len(rest), step)]
        self.worker_groups = groups
        self.timings: dict[str, float] = {}
        self._failures_checked = 0.0

    @property
    def reg(self) -> Registry:
        assert self.registry is not None
        return self.registry

    def spawn(self, name: str, *args: str) -> Process:
        proc = Process(name, [sys.executable, *args], log=self.workdir / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    async def start(self) -> None:
        await asyncio.to_thread(self.zk.start)
        self.registry = await asyncio.to_thread(Registry(self.zk.hosts, ROOT).start)
        await asyncio.to_thread(self.reg.watch_tree, layout.ROUTES, self.routes.on_event)
        tokens = self.workdir / "tokens.toml"
        tokens.write_text(f'[[tokens]]\nname = "bench"\nrole = "admin"\ntoken = "{self.token}"\n')
        tokens.chmod(0o600)
        manager = self.spawn(
            "manager", "-m", "manager_api", "--zk", self.zk.hosts, "--root", ROOT, "--host",
            "127.0.0.1", "--port", "0", "--blob-dir", str(self.workdir / "blobs"),
            "--tokens-file", str(tokens), "--log-level", "WARNING",
        )  # fmt: skip
        workers = [
            self.spawn(
                f"workers-{n}",
                "-m",
                "bench.scale.workers",
                "--zk",
                self.zk.hosts,
                "--root",
                ROOT,
                "--workdir",
                str(self.workdir / "agents"),
                "--session-timeout-s",
                str(self.args.session_timeout_s),
                *(a for w in group for a in ("--worker-id", w)),
            )
            for n, group in enumerate(self.worker_groups)
        ]
        ready = await asyncio.to_thread(manager.wait_ready, 120)
        self.manager_url = f"http://127.0.0.1:{ready['ports']['http']}"
        for proc in workers:
            await asyncio.to_thread(proc.wait_ready, 120)
        for mode, (worker_id,), proc in zip(
            self.args.modes, self.worker_groups, workers, strict=False
        ):
            self.victims[mode] = (worker_id, proc)

    async def create_models(self, http: httpx.AsyncClient) -> None:
        """Every model and its version 1 through the REST API, ``--http-concurrency`` at once."""
        wanted = [(m, self.args.replicas) for m in self.models]
        wanted += [(m, 0) for m in self.churn_models]
        queue = iter(wanted)

        async def creator() -> None:
            for name, replicas in queue:
                body = {"name": name, "backend": "triton", "replicas": replicas, "group": GROUP}
                (await http.post("/v1/models", json=body)).raise_for_status()
                version = {"version": 1, "artifact_uri": ARTIFACT_URI}
                (await http.post(f"/v1/models/{name}/versions", json=version)).raise_for_status()

        started = time.monotonic()
        await asyncio.gather(*(creator() for _ in range(self.args.http_concurrency)))
        self.timings["create_s"] = time.monotonic() - started
        want = len(self.models) * self.args.replicas

        async def placed() -> bool:
            if self.routes.count() >= want:
                return True
            if time.monotonic() >= self._failures_checked + 2.0:
                await asyncio.to_thread(self.check_failures)
            return False

        await wait_until(placed, f"{want} routes published", self.args.placement_timeout_s)
        self.timings["placement_s"] = time.monotonic() - started

    def check_failures(self) -> None:
        """Raise if a worker reports a model FAILED (placement would never complete)."""
        self._failures_checked = time.monotonic()
        for worker_id, worker in self.reg.read_children(layout.WORKERS, Worker).items():
            for key, health in worker.models.items():
                if health.state == "FAILED":
                    raise RuntimeError(f"{worker_id} reports {key} FAILED: {health.error}")

    def zk_nodes(self) -> int:
        host, _, port = self.zk.hosts.split(",")[0].rpartition(":")
        for line in four_letter(host, int(port), "mntr").splitlines():
            name, _, value = line.partition("\t")
            if name == "zk_znode_count":
                return int(value)
        raise RuntimeError("ZooKeeper's mntr has no zk_znode_count")

    async def reconcile_pass_s(self, http: httpx.AsyncClient, passes: int = 2) -> float:
        """Mean duration of the next ``passes`` reconcile passes (nothing changes meanwhile)."""

        async def histogram() -> tuple[float, float]:
            response = await http.get("/metrics")
            response.raise_for_status()
            samples = metric_samples(response.text)
            return (
                samples["modelgate_manager_reconcile_seconds_sum"][0][1],
                samples["modelgate_manager_reconcile_seconds_count"][0][1],
            )

        total0, count0 = await histogram()

        async def done() -> tuple[float, float] | None:
            total, count = await histogram()
            return (total, count) if count >= count0 + passes else None

        total, count = await wait_until(done, f"{passes} reconcile passes", 600)
        return float((total - total0) / (count - count0))

    async def status_api_ms(self, http: httpx.AsyncClient) -> tuple[float, int]:
        """p99 of ``--status-calls`` sequential status reads of random models (fewer if
        ``--status-budget-s`` runs out first, but at least 3); and how many were made."""
        rng = random.Random(1)
        seconds: list[float] = []
        deadline = time.monotonic() + self.args.status_budget_s
        for name in rng.choices(self.models, k=self.args.status_calls):
            if len(seconds) >= 3 and time.monotonic() > deadline:
                break
            started = time.perf_counter()
            (await http.get(f"/v1/models/{name}/status")).raise_for_status()
            seconds.append(time.perf_counter() - started)
        return percentile(seconds, 99) * 1e3, len(seconds)

    def stop(self) -> None:
        stop_all(self.procs[::-1], 30)
        if self.registry is not None:
            self.registry.stop()
        self.zk.stop()


class Gateway:
    """One gateway process of a data plane, and what it exposes."""

    def __init__(self, fleet: Fleet, mode: str, root: str, name: str) -> None:
        self.fleet = fleet
        self.mode = mode
        # NOTE: a short path of its own: HAProxy refuses admin socket paths over 97 bytes
        self.layout = Layout(Path(tempfile.mkdtemp(prefix="mg-scale-")))
        self.proc = fleet.spawn(
            name, "-m", "gateway", "--zk", fleet.zk.hosts, "--root", root, "--host", "127.0.0.1",
            "--port", "0", "--metrics-port", "0", "--gateway-id", name, "--log-level",
            "WARNING", "--dataplane", mode, "--haproxy-dir", str(self.layout.run_dir),
        )  # fmt: skip
        self.started = time.monotonic()
        self.channel: grpc.aio.Channel | None = None
        self.metrics_url = ""

    async def wait_ready(self) -> float:
        """Seconds from spawn to the ready file (the first table is built by then)."""
        ready = await asyncio.to_thread(self.proc.wait_ready, self.fleet.args.placement_timeout_s)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{ready['ports']['grpc']}")
        self.metrics_url = f"http://127.0.0.1:{ready['ports']['metrics']}/metrics"
        return time.monotonic() - self.started

    async def model_ready(self, name: str) -> bool:
        """KServe ModelReady without a version: answered from the Python path's table."""
        assert self.channel is not None
        call = self.channel.unary_unary(
            "/inference.GRPCInferenceService/ModelReady",
            request_serializer=service_pb2.ModelReadyRequest.SerializeToString,
            response_deserializer=service_pb2.ModelReadyResponse.FromString,
        )
        response = await call(service_pb2.ModelReadyRequest(name=name), timeout=30)
        return bool(response.ready)

    async def samples(
        self, http: httpx.AsyncClient
    ) -> dict[str, list[tuple[dict[str, str], float]]]:
        response = await http.get(self.metrics_url)
        response.raise_for_status()
        return metric_samples(response.text)

    async def route_counts(self, http: httpx.AsyncClient) -> dict[str, float]:
        samples = await self.samples(http)
        return {labels["model"]: value for labels, value in samples["modelgate_gateway_routes"]}

    async def map_entries(self) -> int:
        """Keys in HAProxy's route map (the fast-path routes it was programmed with)."""
        api = RuntimeApi(self.layout.admin_socket)
        (out,) = await api.execute([f"show map {self.layout.route_map}"])
        return len(out.splitlines())

    async def complete(self, http: httpx.AsyncClient) -> bool:
        """Every model routable with all its replicas (and in haproxy mode the route map full:
        a fast-path route per model: its instances share HAProxy's instance backends)."""
        counts = await self.route_counts(http)
        if not all(counts.get(m) == self.fleet.args.replicas for m in self.fleet.models):
            return False
        if self.mode == "python":
            return True
        return await self.map_entries() >= len(self.fleet.models)

    def rss_mb(self) -> tuple[float, float]:
        """RSS of the gateway process and of everything it started (HAProxy)."""
        top = psutil.Process(self.proc.pid)
        children = sum(c.memory_info().rss for c in top.children(recursive=True))
        return top.memory_info().rss / 2**20, children / 2**20

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        await asyncio.to_thread(self.proc.stop, 30)
        await asyncio.to_thread(shutil.rmtree, self.layout.run_dir, True)


async def cold_start(
    fleet: Fleet, http: httpx.AsyncClient, mode: str
) -> tuple[Gateway, dict[str, float]]:
    """Start gateways on an empty root (the baseline: interpreter, imports, HAProxy) and on the
    fleet until the table is complete, ``--cold-starts`` times each; the fastest of each counts
    (the machine's other load only ever adds). Returns the last fleet gateway, running."""
    empty_s = []
    for n in range(fleet.args.cold_starts):
        empty = Gateway(fleet, mode, EMPTY_ROOT, f"gateway-{mode}-empty-{n}")
        empty_s.append(await empty.wait_ready())
        await empty.stop()
    ready_s, complete_s = [], []
    gateway: Gateway | None = None
    for n in range(fleet.args.cold_starts):
        if gateway is not None:
            await gateway.stop()
        gateway = gw = Gateway(fleet, mode, ROOT, f"gateway-{mode}-{n}")
        ready_s.append(await gw.wait_ready())
        await wait_until(partial(gw.complete, http), "every model routable", 600)
        complete_s.append(time.monotonic() - gw.started)
    assert gateway is not None
    return gateway, {
        "gateway_start_empty_s": round(min(empty_s), 3),
        "gateway_ready_s": round(min(ready_s), 3),
        "gateway_complete_s": round(min(complete_s), 3),
        "table_build_s": round(max(0.0, min(complete_s) - min(empty_s)), 3),
    }


def stall_of(samples: dict[str, list[tuple[dict[str, str], float]]]) -> tuple[float, float, float]:
    """The gateway's longest loop stall of the last 10 s, and the CPU its loop thread and
    its whole process used during it (gateway/looplag.py)."""

    def read(name: str) -> float:
        return samples[f"modelgate_gateway_loop_stall_{name}_seconds"][0][1]

    return read("max"), read("loop_cpu"), read("process_cpu")


def stall_figures(stalls: list[tuple[float, float, float]]) -> dict[str, float | None]:
    """``loop_stall_max_ms`` and where that stall's time went (None without readings)."""
    longest = max(stalls, default=None)
    names = ("loop_stall_max_ms", "loop_stall_loop_cpu_ms", "loop_stall_process_cpu_ms")
    if longest is None:
        return dict.fromkeys(names)
    return {name: round(value * 1e3, 1) for name, value in zip(names, longest, strict=True)}


async def churn(fleet: Fleet, gw: Gateway, http: httpx.AsyncClient) -> dict[str, Any]:
    """Add and remove the churn models' routes at ``--churn-rate``/s for ``--churn-s``; time
    each change until the gateway's ModelReady agrees.

    One ModelReady call is in flight at a time, round-robin over the changes not visible yet,
    ``--poll-ms`` apart: the probe's own load on the gateway stays bounded however slow the
    gateway is (the resolution is then coarser, in proportion)."""
    args = fleet.args
    listener = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    address = f"127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    nodes: dict[str, EphemeralNode] = {}
    #: model -> (ModelReady answer once the change is visible, when the change began)
    pending: dict[str, tuple[bool, float]] = {}
    changed = asyncio.Event()
    latencies: list[float] = []
    #: (model, when its change began) of every change, for the ZooKeeper watch latency
    began: list[tuple[str, float]] = []
    #: (longest stall, loop-thread CPU and process CPU in it) read every second
    stalls: list[tuple[float, float, float]] = []
    probe_s: list[float] = []
    probe_failures: list[str] = []
    election: dict[str, Any] = {}
    writes: set[asyncio.Task[None]] = set()
    stall_exported = True

    async def write(name: str) -> None:
        node = nodes.pop(name, None)
        if node is None:
            record = Route(model=name, version=1, worker_id=CHURN_WORKER, address=address,
                           protocol="kserve")  # fmt: skip
            path = layout.route(name, 1, CHURN_WORKER)
            nodes[name] = await asyncio.to_thread(fleet.reg.register_ephemeral, path, record)
        else:
            await asyncio.to_thread(node.remove)

    async def check(name: str) -> None:
        asked = time.perf_counter()
        try:
            ready = await gw.model_ready(name)
        except grpc.aio.AioRpcError as err:
            probe_failures.append(f"{err.code().name}: {err.details()}")
            return
        answered = time.perf_counter()
        probe_s.append(answered - asked)
        want, since = pending[name]
        if ready == want:
            latencies.append(answered - since)
            del pending[name]

    async def observe() -> None:
        while True:
            if not pending:
                changed.clear()
                await changed.wait()
            await asyncio.gather(*(check(name) for name in list(pending)))
            await asyncio.sleep(args.poll_ms / 1e3)

    async def watch_stalls() -> None:
        nonlocal stall_exported
        while True:
            samples = await gw.samples(http)
            # NOTE: a gateway that does not run the probe (gateway/looplag.py) has no wake-ups
            if not samples.get("modelgate_gateway_loop_lag_seconds_count", [({}, 0.0)])[0][1]:
                stall_exported = False
                return
            stalls.append(stall_of(samples))
            await asyncio.sleep(1.0)

    async def kill_leader(ensemble: LocalEnsemble) -> None:
        await asyncio.sleep(args.churn_s / 2)
        leader = partial(asyncio.to_thread, ensemble.leader)
        killed_one = await wait_until(leader, "a ZooKeeper leader", 60)
        killed = time.monotonic()
        await asyncio.to_thread(killed_one.kill)
        await wait_until(leader, "a new ZooKeeper leader", 60)
        election["zk_reelection_s"] = round(time.monotonic() - killed, 3)
        await asyncio.to_thread(killed_one.start)  # NOTE: a full ensemble for the next kill

    # NOTE: the gateway's longest stall is over the last 10 s: let the cold start's leave
    # that window first, so that what is read during the churn is the churn's own
    await asyncio.sleep(STALL_WINDOW_S)
    fleet.routes.forget_churn()
    helpers = [asyncio.create_task(observe()), asyncio.create_task(watch_stalls())]
    if isinstance(fleet.zk, LocalEnsemble):
        helpers.append(asyncio.create_task(kill_leader(fleet.zk)))
    changes = skipped = 0
    started = time.monotonic()
    ticks = int(args.churn_s * args.churn_rate)
    try:
        for tick in range(ticks):
            await asyncio.sleep(max(0.0, started + tick / args.churn_rate - time.monotonic()))
            name = fleet.churn_models[tick % len(fleet.churn_models)]
            if name in pending:  # the last change to it is not visible yet: skip, count it
                skipped += 1
                continue
            pending[name] = (name not in nodes, time.perf_counter())
            began.append((name, pending[name][1]))
            changed.set()
            task = asyncio.create_task(write(name))
            writes.add(task)
            task.add_done_callback(writes.discard)
            changes += 1
        await asyncio.gather(*writes)

        async def all_visible() -> bool:
            return not pending

        await wait_until(all_visible, "every route change visible", args.placement_timeout_s)
        if len(helpers) > 2:
            await helpers[2]  # the leader kill and the member's restart
        if stall_exported:
            stalls.append(stall_of(await gw.samples(http)))
        # NOTE: another session's TreeCache (the benchmark's) sees each change too: the part
        # of the route update that is ZooKeeper's, not the gateway's
        watch = fleet.routes.churn_watch_latencies(began)
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        for node in nodes.values():
            await asyncio.to_thread(node.remove)
        listener.close()
    return {
        "churn_s": args.churn_s,
        "churn_changes": changes,
        "churn_skipped": skipped,
        "route_update_p50_ms": round(percentile(latencies, 50) * 1e3, 1),
        "route_update_p99_ms": round(percentile(latencies, 99) * 1e3, 1),
        "route_update_max_ms": round(max(latencies) * 1e3, 1),
        "gateway_call_failures": len(probe_failures),
        "gateway_call_failure_examples": sorted(set(probe_failures))[:3],
        **election,
        "zk_watch_p50_ms": round(percentile(watch, 50) * 1e3, 1),
        "zk_watch_p99_ms": round(percentile(watch, 99) * 1e3, 1),
        **stall_figures(stalls if stall_exported else []),
        "model_ready_max_ms": round(max(probe_s) * 1e3, 1),
    }


async def replace_worker(fleet: Fleet, gw: Gateway, http: httpx.AsyncClient) -> dict[str, Any]:
    """SIGKILL this data plane's victim worker; time until every replica it held is placed
    elsewhere and the gateway routes each of those models to R instances again."""
    worker_id, proc = fleet.victims[gw.mode]
    reg, replicas = fleet.reg, fleet.args.replicas
    keys = await asyncio.to_thread(reg.children, layout.assignments(worker_id))
    held = [layout.parse_assignment_key(k) for k in keys]
    swaps0 = (await gw.samples(http))["modelgate_gateway_table_swaps_total"][0][1]
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGKILL)

    def replaced_in_zookeeper() -> bool:
        if reg.exists(layout.worker(worker_id)):
            return False  # its session has not expired yet
        return all(
            worker_id not in (owners := fleet.routes.of(key)) and len(owners) >= replicas
            for key in held
        )

    async def routable() -> bool:
        if not await asyncio.to_thread(replaced_in_zookeeper):
            return False
        samples = await gw.samples(http)
        # NOTE: nothing but this worker's routes changes now: a table swapped after the kill
        # holds the expiry, so R instances in it are the new ones
        if samples["modelgate_gateway_table_swaps_total"][0][1] <= swaps0:
            return False
        counts = {labels["model"]: value for labels, value in samples["modelgate_gateway_routes"]}
        return all(counts.get(model) == replicas for model, _ in held)

    await wait_until(routable, f"{worker_id}'s replicas replaced", fleet.args.placement_timeout_s)
    return {
        "replace_worker_s": round(time.monotonic() - started, 2),
        "replaced_worker": worker_id,
        "replaced_replicas": len(held),
        "session_timeout_s": fleet.args.session_timeout_s,
    }


async def measure_size(
    workdir: Path, args: argparse.Namespace, models: int
) -> list[dict[str, Any]]:
    fleet = Fleet(workdir, args, models)
    runs = []
    try:
        await fleet.start()
        headers = {"Authorization": f"Bearer {fleet.token}"}
        async with httpx.AsyncClient(base_url=fleet.manager_url, headers=headers,
                                     timeout=600) as http:  # fmt: skip
            await fleet.create_models(http)
            print(f"  {models} models: created in {fleet.timings['create_s']:.1f}s, placed in "
                  f"{fleet.timings['placement_s']:.1f}s", flush=True)  # fmt: skip
            common: dict[str, Any] = {
                "models": models,
                "replicas": args.replicas,
                "workers": args.workers,
                "worker_processes": len(fleet.worker_groups),
                "zk_servers": args.zk_ensemble,
                "zk_nodes": await asyncio.to_thread(fleet.zk_nodes),
                "create_models_s": round(fleet.timings["create_s"], 2),
                "placement_s": round(fleet.timings["placement_s"], 2),
                "reconcile_pass_s": round(await fleet.reconcile_pass_s(http), 6),
            }
            status_ms, common["status_calls"] = await fleet.status_api_ms(http)
            common["status_api_ms"] = round(status_ms, 1)
            for mode in args.modes:
                gw, build = await cold_start(fleet, http, mode)
                try:
                    churned = await churn(fleet, gw, http)
                    rss, haproxy_rss = gw.rss_mb()
                    replaced = await replace_worker(fleet, gw, http)
                finally:
                    await gw.stop()
                run = {**common, "dataplane": mode, **build, **churned,
                       "gateway_rss_mb": round(rss, 1), "haproxy_rss_mb": round(haproxy_rss, 1),
                       **replaced}  # fmt: skip
                print(f"  {json.dumps(run)}", flush=True)
                runs.append(run)
    finally:
        await asyncio.to_thread(fleet.stop)
    return runs


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The top-level figures: the largest size, the worse of the data planes for each."""
    largest = max(r["models"] for r in runs)
    rows = [r for r in runs if r["models"] == largest]
    out: dict[str, Any] = {}
    for name in FIELDS:
        values = [r[name] for r in rows if r[name] is not None]
        out[name] = max(values) if values else None
    return out


def table(runs: list[dict[str, Any]]) -> str:
    columns = [
        ("models", "models", 6), ("dataplane", "plane", 7), ("zk_nodes", "zk nodes", 8),
        ("table_build_s", "build s", 7), ("route_update_p50_ms", "upd p50", 7),
        ("route_update_p99_ms", "upd p99", 7), ("loop_stall_max_ms", "stall ms", 8),
        ("gateway_rss_mb", "RSS MB", 6), ("reconcile_pass_s", "pass s", 6),
        ("replace_worker_s", "replace", 7), ("status_api_ms", "status", 7),
    ]  # fmt: skip
    lines = [" ".join(f"{title:>{width}s}" for _, title, width in columns)]
    for r in runs:
        lines.append(" ".join(f"{'-' if r[k] is None else r[k]!s:>{w}s}" for k, _, w in columns))
    return "\n".join(lines)


@contextlib.contextmanager
def workspace(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="modelgate-scale-") as tmp:
        yield Path(tmp)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--models", type=int, nargs="+", default=[1000, 3000, 10000],
                        help="fleet sizes, one run each")  # fmt: skip
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="gateway data planes to measure")  # fmt: skip
    parser.add_argument("--churn-s", type=float, default=60.0, help="seconds of route churn")
    parser.add_argument("--churn-rate", type=float, default=10.0, help="route changes per second")
    parser.add_argument("--poll-ms", type=float, default=5.0,
                        help="ModelReady poll interval while a change is not visible")  # fmt: skip
    parser.add_argument("--agents-per-process", type=int, default=25)
    parser.add_argument("--session-timeout-s", type=float, default=10.0,
                        help="the simulated workers' ZooKeeper session timeout")  # fmt: skip
    parser.add_argument("--http-concurrency", type=int, default=8,
                        help="REST requests in flight while creating models")  # fmt: skip
    parser.add_argument("--status-calls", type=int, default=50)
    parser.add_argument("--status-budget-s", type=float, default=60.0,
                        help="stop status calls after this long (3 at least)")  # fmt: skip
    parser.add_argument("--cold-starts", type=int, default=3,
                        help="gateway cold starts per data plane (the fastest counts)")  # fmt: skip
    parser.add_argument("--placement-timeout-s", type=float, default=1800.0)
    parser.add_argument("--zk-heap-mb", type=int, default=1024, help="per ZooKeeper server")
    parser.add_argument("--zk-ensemble", type=int, default=1, choices=(1, 3, 5),
                        help="ZooKeeper servers; over 1, each churn kills the leader")  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="keep logs here (default: a temp dir)")
    parser.add_argument("--output", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args(argv)
    if args.workers < len(args.modes) + args.replicas:
        parser.error(f"--workers must be at least {len(args.modes) + args.replicas}: one worker "
                     "per data plane is killed, and its replicas need room elsewhere")  # fmt: skip
    return args


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    with workspace(args.workdir) as workdir:
        for models in args.models:
            print(f"fleet of {models} models x {args.replicas} on {args.workers} workers",
                  flush=True)  # fmt: skip
            runs += await measure_size(workdir / f"models-{models}", args, models)
    return runs


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # NOTE: unwinds through the finally blocks that stop the fleet


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    runs = asyncio.run(run(args))
    print()
    print(table(runs))
    result = {
        **summary(runs),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
