"""The worker agent's settings: one class, read from ``MODELGATE_WORKER_*`` and flags.

Built once in :mod:`worker_agent.__main__` and passed into constructors; nothing reads
configuration at import time.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from registry import layout
from registry.errors import InvalidArgumentError


def _parse_labels(value: Any) -> Any:
    if isinstance(value, str):
        labels: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            key, sep, val = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"labels must be k=v,k2=v2; got {part!r}")
            labels[key.strip()] = val.strip()
        return labels
    return value


class WorkerSettings(BaseSettings):
    """Settings of one worker agent (env prefix ``MODELGATE_WORKER_``)."""

    model_config = SettingsConfigDict(
        env_prefix="MODELGATE_WORKER_",
        use_attribute_docstrings=True,
        extra="ignore",
    )

    zk: str = "127.0.0.1:2181"
    """ZooKeeper connection string, "host1:2181,host2:2181"."""
    root: str = layout.DEFAULT_ROOT
    """ZooKeeper root (chroot) shared by every modelgate role."""
    worker_id: str | None = None
    """This worker's id in ZooKeeper; default "<advertise-host>:<backend port>"."""
    backend: Literal["triton", "tfserving"] = "triton"
    """Kind of model server beside this agent."""
    backend_address: str | None = None
    """gRPC "host:port" of the model server (required unless --launch-triton)."""
    launch_triton: bool = False
    """Start and supervise tritonserver (from the nvidia-pytriton wheel) on model-root."""
    launch: str | None = None
    """Start and supervise this model-server command line (needs --backend-address)."""
    triton_grpc_port: int = Field(default=8001, ge=0, le=65535)
    """gRPC port of the launched tritonserver (0: pick a free one)."""
    launch_host: str = "0.0.0.0"
    """Address the launched tritonserver binds to."""
    model_root: Path = Path("models")
    """Local model repository: <model-root>/<model>/<version>/..."""
    work_dir: Path | None = None
    """Scratch dir for the launched server's logs and backends; default <model-root>/../.worker."""
    route_address: str | None = None
    """Model-server address published in routes; default: the backend address (launched
    Triton: "<advertise-host>:<port>")."""
    server_model_root: Path | None = None
    """The model root as the model server sees it (TF-Serving in a container); default
    --model-root."""
    advertise_host: str = Field(default_factory=socket.gethostname)
    """Host name other roles use to reach this worker (routes, status address)."""
    labels: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    """Worker labels for placement, "k=v,k2=v2"."""
    capacity_memory_mb: int | None = Field(default=None, ge=0)
    """Memory offered to models, in MiB (placement, and the memory guard's limit); unset
    means unknown."""
    capacity_cpu: float | None = Field(default=None, gt=0)
    """CPU cores offered to models (placement); default: the CPUs this agent may run on."""
    memory_guard: bool = True
    """With --capacity-memory-mb and a launched server: kill the server when its process
    tree's measured memory goes over the capacity (as a cgroup memory limit would); it is
    restarted, and the copy loaded last is recorded out of memory and not reloaded here."""
    oom_sigkill_ratio: float = Field(default=0.9, gt=0, le=1)
    """A launched server killed by SIGKILL from outside counts as out of memory when its
    last measured memory was at least this share of --capacity-memory-mb."""
    oom_retry_margin_mb: float = Field(default=128.0, ge=0)
    """An out-of-memory copy is loaded here again once the free measured memory (capacity
    minus the server's, with no copy loading) is its measured size plus this many MiB."""
    status_host: str = "0.0.0.0"
    """Address of the status HTTP server (/healthz, /metrics)."""
    status_port: int = Field(default=9200, ge=0, le=65535)
    """Port of the status HTTP server (0: pick a free one)."""
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    """Seconds between heartbeats (liveness and readiness probes, usage measured; the worker
    record is written when what readers use changed)."""
    heartbeat_refresh_s: float = Field(default=60.0, gt=0)
    """Longest time between two writes of the worker record when nothing changed: its
    ``heartbeat`` time is refreshed this often (liveness itself is the ZooKeeper session)."""
    drain_s: float = Field(default=10.0, ge=0)
    """Seconds between withdrawing a route and unloading its model (in-flight calls finish)."""
    load_timeout_s: float = Field(default=300.0, gt=0)
    """Seconds a model may take to become ready after a load request."""
    unload_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds an unload may take before the agent stops waiting for it."""
    max_artifact_bytes: int = Field(default=20 * 1024**3, gt=0)
    """Largest artifact accepted, downloaded or extracted, in bytes."""
    manager_url: str | None = None
    """Base URL of the manager; artifact URLs under it get the blob token."""
    blob_token: str | None = None
    """Bearer token sent with downloads from --manager-url (the manager's blob URLs). A
    secret: environment only, no flag."""
    http_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds without progress before an http(s) download fails."""
    zk_connect_timeout_s: float = Field(default=30.0, gt=0)
    """Seconds to wait for ZooKeeper at start-up."""
    zk_session_timeout_s: float = Field(default=10.0, gt=0)
    """ZooKeeper session timeout in seconds."""
    zk_operation_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds one ZooKeeper write (e.g. a heartbeat) is retried before it counts as failed."""
    restart_backoff_min_s: float = Field(default=1.0, gt=0)
    """First wait before restarting a launched model server that died, in seconds."""
    restart_backoff_max_s: float = Field(default=30.0, gt=0)
    """Longest wait between restarts of a launched model server, in seconds."""
    log_level: str = "INFO"
    """Logging level of the agent."""
    log_json: bool = False
    """Log one JSON object per line."""
    ready_file: Path | None = None
    """Write a JSON file with the pid and bound ports here once serving (for supervisors and
    tests)."""

    _labels = field_validator("labels", mode="before")(_parse_labels)

    @model_validator(mode="after")
    def _check(self) -> WorkerSettings:
        if self.launch_triton and self.backend != "triton":
            raise ValueError("--launch-triton needs --backend triton")
        if self.launch_triton and self.launch:
            raise ValueError("use either --launch-triton or --launch CMD, not both")
        if not self.launch_triton and not self.backend_address:
            raise ValueError("--backend-address is required unless --launch-triton is given")
        if self.worker_id is not None:
            try:
                layout.check_node_id("worker", self.worker_id)
            except InvalidArgumentError as err:
                raise ValueError(str(err)) from None
        return self
