"""The stack a benchmark runs on: a real ZooKeeper and its registry, Triton with the models
routed to it by hand (no worker agent), and the processes started on them (gateways), torn
down in reverse. Used as a context manager::

    with BenchStack(workdir, "/bench", "bench") as stack:
        write_add_one(stack.triton.model_repository, "m")
        stack.start_triton(["m"])
        stack.route(Model(name="m", backend="triton"))
        gateway = stack.gateway("python", "python")
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Self

import tritonclient.grpc as triton_grpc

from deploy.local.runner import Process, stop_all
from deploy.local.zookeeper import LocalZooKeeper
from registry import Registry, layout
from registry.records import Model, ModelVersion, Route
from worker_agent.tritonserver import TritonServer


class BenchStack:
    """ZooKeeper, a registry under ``root``, Triton and the processes started on them;
    ``name`` prefixes the ids it gives (Triton's worker id, the gateways' ids)."""

    def __init__(self, workdir: Path, root: str, name: str) -> None:
        self.workdir, self.root, self.name = workdir, root, name
        self.zk = LocalZooKeeper(workdir / "zk")
        self.triton = TritonServer(workdir / "triton-models", workdir / "triton")
        self.procs: list[Process] = []
        self._registry: Registry | None = None

    def __enter__(self) -> Self:
        try:
            self.zk.start()
            self._registry = Registry(self.zk.hosts, self.root).start()
            self.setup()
        except BaseException:
            self.__exit__()
            raise
        return self

    def setup(self) -> None:
        """What a subclass starts on the registry before the block runs (torn down the same
        way if it fails half-way)."""

    def __exit__(self, *exc: object) -> None:
        stop_all(self.procs[::-1], 30)
        self.triton.stop()
        if self._registry is not None:
            self._registry.stop()
        self.zk.stop()

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            raise RuntimeError("the bench stack is not started (use it in a with block)")
        return self._registry

    def start_triton(self, models: Iterable[str]) -> None:
        """Start Triton on the models written to its repository and load ``models``."""
        self.triton.start()
        client = triton_grpc.InferenceServerClient(self.triton.address)
        try:
            for name in models:
                client.load_model(name)
        finally:
            client.close()

    def route(self, model: Model, versions: Iterable[int] = (1,)) -> None:
        """Register ``model`` and route each of its ``versions`` to Triton, by hand."""
        worker_id = f"{self.name}-triton"
        self.registry.put(layout.model(model.name), model)
        for v in versions:
            self.registry.put(
                layout.version(model.name, v), ModelVersion(version=v, artifact_uri="file:///x")
            )
            self.registry.put(
                layout.route(model.name, v, worker_id),
                Route(model=model.name, version=v, worker_id=worker_id,
                      address=self.triton.address, protocol="kserve"),
            )  # fmt: skip

    def spawn(self, name: str, *args: str) -> Process:
        """Start ``python <args>`` and wait for its ready file (its ports: ``Process.port``)."""
        proc = Process(name, [sys.executable, *args], log=self.workdir / f"{name}.log").start()
        self.procs.append(proc)
        proc.wait_ready(timeout=120)
        return proc

    def gateway(self, name: str, dataplane: str, *extra: str) -> Process:
        """A gateway with id ``<stack name>-<name>`` on this stack's registry."""
        return self.spawn(
            name, "-m", "gateway", "--zk", self.zk.hosts, "--root", self.root, "--host",
            "127.0.0.1", "--port", "0", "--metrics-port", "0", "--gateway-id",
            f"{self.name}-{name}", "--log-level", "WARNING", "--dataplane", dataplane, *extra,
        )  # fmt: skip

    def stop(self, proc: Process) -> None:
        """Stop one of the processes before the stack is torn down."""
        self.procs.remove(proc)
        stop_all([proc], 30)

    def inferences(self, model: str, version: str = "1") -> int:
        """Calls Triton answered for ``model`` ``version`` (every path ends there)."""
        client = triton_grpc.InferenceServerClient(self.triton.address)
        try:
            stats = client.get_inference_statistics(model, version, as_json=True)
            return sum(int(s["inference_stats"]["success"].get("count", 0))
                       for s in stats["model_stats"])  # fmt: skip
        finally:
            client.close()
