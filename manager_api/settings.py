"""The manager's one settings class (env prefix ``MODELGATE_MANAGER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from registry import layout


class ManagerSettings(BaseSettings):
    """Settings of one manager process. Built once in ``__main__`` and passed in."""

    model_config = SettingsConfigDict(
        env_prefix="MODELGATE_MANAGER_", use_attribute_docstrings=True, extra="ignore"
    )

    zk: str = "127.0.0.1:2181"
    """ZooKeeper connection string, "host1:2181,host2:2181"."""

    root: str = layout.DEFAULT_ROOT
    """ZooKeeper chroot shared by every modelgate role of one deployment."""

    host: str = "0.0.0.0"
    """Interface the REST API listens on."""

    port: int = Field(default=8080, ge=0, le=65535)
    """REST API port; 0 picks a free one (tests)."""

    blob_dir: Path = Path("./.run/blobs")
    """Directory of the content-addressed blob store (uploaded plugins and model archives)."""

    tokens_file: Path | None = None
    """TOML file of bearer tokens and their roles (see docs/manager.md). Required to serve."""

    audit_log: Path | None = None
    """File the audit log (one JSON line per state change) is appended to; None: log only."""

    public_url: str | None = None
    """Base URL workers and gateways use to reach this manager (blob URLs). None: the URL
    the uploading client used."""

    manager_id: str | None = None
    """Identifier in the leader election; None: "<hostname>:<pid>"."""

    reconcile: bool = True
    """Take part in the leader election and run the reconcile loop when elected."""

    reconcile_interval_s: float = Field(default=5.0, gt=0)
    """Longest time between two reconcile passes; watches and API writes trigger one sooner."""

    load_interval_s: float = Field(default=5.0, gt=0)
    """Seconds between two scrapes of the gateways' metrics (per-model load samples)."""

    autoscale_interval_s: float = Field(default=5.0, gt=0)
    """Seconds between two autoscaling decisions of the reconcile leader (a wake from a
    gateway and a model short of memory are handled at the next reconcile pass)."""

    autoscale_up_cooldown_s: float = Field(default=15.0, ge=0)
    """Seconds after a model's last scaling before it is scaled up again by load (the new
    replicas' effect shows in the load first)."""

    autoscale_down_window_s: float = Field(default=120.0, ge=0)
    """Stabilisation window: a model is scaled down only to the most replicas its load
    needed over this many seconds, and not sooner than this after its last scaling."""

    evict_idle_s: float = Field(default=60.0, ge=0)
    """Seconds without a call after which a copy of a model with ``min_replicas`` 0 may be
    evicted (scaled to zero) to make room for a model short of memory."""

    uri_schemes: list[str] = ["file", "http", "https", "s3", "gs"]
    """Artifact URI schemes accepted for model versions."""

    max_plugin_mb: int = Field(default=50, gt=0)
    """Largest plugin zip accepted, in MiB (also bounds its uncompressed size x4)."""

    max_archive_mb: int = Field(default=2048, gt=0)
    """Largest uploaded model archive accepted, in MiB."""

    zk_connect_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds to retry the first ZooKeeper connection before giving up."""

    tls_cert: Path | None = None
    """PEM certificate chain file; with ``tls_key`` the REST port serves HTTPS."""

    tls_key: Path | None = None
    """PEM private key file matching ``tls_cert``."""

    log_level: str = "INFO"
    """Level of the ``manager_api`` loggers."""

    log_json: bool = False
    """Log one JSON object per line instead of text."""

    ready_file: Path | None = None
    """Write a JSON file with the pid and bound ports here once serving (for supervisors and
    tests)."""

    @model_validator(mode="after")
    def _tls_pair(self) -> ManagerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both tls_cert and tls_key, or neither")
        return self
