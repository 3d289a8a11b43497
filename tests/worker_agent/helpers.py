"""Helpers for the worker-agent tests: artifacts to pull, and an agent on its own loop."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
import threading
import zipfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc as triton_grpc
from prometheus_client import CollectorRegistry

from examples.models import write_add_one
from registry import Registry, layout
from registry.records import Assignment, Route, Worker
from worker_agent.agent import WorkerAgent
from worker_agent.settings import WorkerSettings

T = TypeVar("T")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def add_one_dir(tmp: Path, name: str, increment: float) -> Path:
    """A directory artifact: ``model.py`` and ``config.pbtxt`` of an add-``increment`` model."""
    repo = tmp / f"src-{name}-{increment:g}"
    write_add_one(repo, name, 1, increment)
    vdir = repo / name / "1"
    (vdir / "config.pbtxt").write_text((repo / name / "config.pbtxt").read_text())
    return vdir


def add_one_archive(tmp: Path, name: str, increment: float = 1.0, kind: str = "tar.gz") -> Path:
    """The same model packed as ``.tar.gz`` or ``.zip`` (entries at the archive's top level)."""
    src = add_one_dir(tmp, name, increment)
    out = tmp / f"{name}-{increment:g}.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(out, "w") as zf:
            for f in sorted(src.iterdir()):
                zf.write(f, f.name)
    else:
        with tarfile.open(out, "w:gz") as tf:
            for f in sorted(src.iterdir()):
                tf.add(f, f.name)
    return out


def tar_with(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def file_entry(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def link_entry(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def assign(
    registry: Registry,
    worker_id: str,
    model: str,
    version: int,
    uri: str,
    sha: str | None = None,
    backend: str = "triton",
) -> None:
    registry.put(
        layout.assignment(worker_id, model, version),
        Assignment(
            model=model,
            version=version,
            backend=backend,  # type: ignore[arg-type]
            artifact_uri=uri,
            sha256=sha,
        ),
    )


def unassign(registry: Registry, worker_id: str, model: str, version: int) -> None:
    registry.delete(layout.assignment(worker_id, model, version))


def route(registry: Registry, model: str, version: int, worker_id: str) -> Route | None:
    return registry.read(layout.route(model, version, worker_id), Route)


def worker(registry: Registry, worker_id: str) -> Worker | None:
    return registry.read(layout.worker(worker_id), Worker)


def model_state(registry: Registry, worker_id: str, key: str) -> str | None:
    record = worker(registry, worker_id)
    health = record.models.get(key) if record else None
    return health.state if health else None


def infer_add_one(address: str, model: str, version: int, values: list[float]) -> list[float]:
    """Call ``model@version`` over KServe v2 gRPC and return OUTPUT0."""
    client = triton_grpc.InferenceServerClient(address)
    try:
        x = np.array(values, dtype=np.float32)
        inp = triton_grpc.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(model, [inp], model_version=str(version), client_timeout=10)
        return [float(v) for v in result.as_numpy("OUTPUT0")]
    finally:
        client.close()


def metric(agent: WorkerAgent, name: str, labels: dict[str, str] | None = None) -> float:
    value = agent.metrics_registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


class AgentThread:
    """A :class:`WorkerAgent` running on an asyncio loop of its own, in a thread.

    The test body stays synchronous (blocking registry calls, ``wait_for``) while the agent
    runs in the same process, exactly as ``python -m worker_agent`` runs it.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.agent = WorkerAgent(settings, metrics_registry=CollectorRegistry())
        self.stopped = False

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> AgentThread:
        self.call(self.agent.start())
        return self

    def drain(self) -> None:
        self.call(self.agent.drain())
        self._close()

    def abandon(self) -> None:
        self.call(self.agent.abandon())
        self._close()

    def _close(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    @property
    def worker_id(self) -> str:
        assert self.agent.worker_id is not None
        return self.agent.worker_id


def settings_for(
    zk_hosts: str, zk_root: str, model_root: Path, backend_address: str | None, **overrides: Any
) -> WorkerSettings:
    values: dict[str, Any] = {
        "zk": zk_hosts,
        "root": zk_root,
        "backend": "triton",
        "backend_address": backend_address,
        "model_root": model_root,
        "worker_id": "w1",
        "advertise_host": "127.0.0.1",
        "status_host": "127.0.0.1",
        "status_port": 0,
        "heartbeat_interval_s": 0.3,
        "drain_s": 0.2,
        "load_timeout_s": 60,
        "unload_timeout_s": 30,
        "zk_connect_timeout_s": 10,
    }
    values.update(overrides)
    return WorkerSettings(**values)
