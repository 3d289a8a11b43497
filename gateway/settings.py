"""The gateway's one settings class (env prefix ``MODELGATE_GATEWAY_``; flags override)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from registry.layout import DEFAULT_ROOT


class GatewaySettings(BaseSettings):
    """Configuration of one gateway process. Built once in ``__main__``, passed down."""

    model_config = SettingsConfigDict(
        env_prefix="MODELGATE_GATEWAY_", use_attribute_docstrings=True, extra="ignore"
    )

    zk: str = "127.0.0.1:2181"
    """ZooKeeper connection string ("h1:2181,h2:2181")."""
    root: str = DEFAULT_ROOT
    """ZooKeeper root (chroot) of this modelgate installation."""
    host: str = "0.0.0.0"
    """Interface the gRPC and metrics ports bind to."""
    port: int = Field(default=8500, ge=0, le=65535)
    """gRPC port of every surface (0 picks a free one)."""
    metrics_port: int = Field(default=8502, ge=0, le=65535)
    """HTTP port of /metrics and /healthz (0 picks a free one)."""
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest request or response message accepted, in bytes."""
    default_timeout_s: float = Field(default=30.0, gt=0)
    """Deadline in seconds for calls whose caller set none."""
    max_attempts: int = Field(default=3, ge=1, le=10)
    """Instances tried per call when a backend fails at the connection level."""
    eject_after: int = Field(default=3, ge=1)
    """Consecutive connection failures that eject a backend address."""
    eject_s: float = Field(default=10.0, gt=0)
    """First ejection period in seconds (doubles on repeated ejection, up to 8x)."""
    grace_s: float = Field(default=10.0, ge=0)
    """Seconds in-flight calls get to finish on shutdown."""
    tls_cert: str | None = None
    """PEM certificate chain file; with ``tls_key`` the gRPC port serves TLS."""
    tls_key: str | None = None
    """PEM private key file matching ``tls_cert``."""
    tls_client_ca: str | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."""
    gateway_id: str | None = None
    """Id under /gateways (default "<hostname>:<port>")."""
    advertise_address: str | None = None
    """Address registered in ZooKeeper (default "<hostname>:<port>")."""
    zk_connect_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds to wait for ZooKeeper at start-up before giving up."""
    plugin_dir: Path | None = None
    """Where plugin packages are cached and unpacked (default: a temporary directory)."""
    blob_token: str | None = None
    """Bearer token for fetching plugin packages from the manager's blob store (the
    manager's ``internal`` role). A secret: environment only, no flag."""
    plugin_threads: int = Field(default=8, ge=1, le=256)
    """Threads running the hooks of ``thread`` plugins (shared by all plugins)."""
    plugin_processes: int = Field(default=2, ge=1, le=64)
    """Worker processes per loaded ``process`` plugin."""
    log_level: str = "INFO"
    """Python logging level of the gateway's loggers."""
    log_json: bool = False
    """Log JSON lines (with model, version and request id of the call) instead of text."""
    haproxy_bin: str = "haproxy"
    """HAProxy executable of the ``haproxy`` data plane (a name on PATH or a path)."""
    dataplane: Literal["haproxy", "python"] = Field(
        default_factory=lambda data: "haproxy" if shutil.which(data["haproxy_bin"]) else "python"
    )
    """``haproxy``: HAProxy on the gRPC port routes passthrough calls itself and hands the
    rest to the Python gateway on ``internal_port`` (default when haproxy is installed);
    ``python``: the Python gateway serves the gRPC port alone."""
    internal_port: int = Field(default=0, ge=0, le=65535)
    """Loopback port of the Python gateway behind HAProxy (0 picks a free one)."""
    python_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    """Python gateway processes serving behind HAProxy, this one included (default: one per
    core; 1: this process alone). HAProxy balances each call over them. Ignored by
    ``--dataplane python``, which is one process."""
    haproxy_dir: Path | None = None
    """Directory of HAProxy's configuration, admin socket and route map (default: a private
    temporary directory, removed on stop)."""
    haproxy_instances: int = Field(1024, ge=1, le=16384)
    """Backend instances (model server addresses) the fast path reaches at once: HAProxy
    pre-declares one backend each (it cannot add backends at run time). Any number of models
    share them; a version whose instances cannot all get one takes the Python path (logged)."""
    cache_redis_url: str | None = None
    """Redis URL ("redis://host:6379/0", "unix:///path/redis.sock") of the response cache,
    shared by the gateways that name it; None: each gateway caches in its own memory. Put no
    password here (flags are visible to every user): use ``cache_redis_password``
    (``MODELGATE_GATEWAY_CACHE_REDIS_PASSWORD``)."""
    cache_redis_password: str | None = None
    """Password of ``cache_redis_url``'s Redis. A secret: environment only, no flag."""
    cache_redis_timeout_s: float = Field(default=0.5, gt=0)
    """Seconds a Redis command of the response cache may take before the call skips it."""
    cold_start_queue: int = Field(default=64, ge=1, le=100_000)
    """Calls that may wait per model for its first instance (a model scaled to zero), per
    gateway process; one more gets RESOURCE_EXHAUSTED."""
    instance_grace_s: float = Field(default=1.0, ge=0, le=60)
    """Seconds a call for an online model with no ready instance waits for one to appear
    (within its deadline) before UNAVAILABLE: a route republished after a server restart, or
    this process's table a few ms behind another's. 0: UNAVAILABLE at once. As many calls
    per model as ``cold_start_queue`` wait; more get UNAVAILABLE at once."""
    shadow_max_in_flight: int = Field(default=64, ge=1)
    """Shadow copies running at once; a sampled copy over this is dropped (and counted)."""
    ready_file: Path | None = None
    """Write a JSON file with the pid and bound ports here once serving (for supervisors and
    tests)."""

    def node_id(self, port: int) -> str:
        return self.gateway_id or f"{socket.gethostname()}:{port}"

    def address(self, port: int) -> str:
        return self.advertise_address or f"{socket.gethostname()}:{port}"
