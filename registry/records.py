"""Typed records stored in ZooKeeper nodes, serialised as JSON.

Every record validates on construction and again right before it is written; a record
that fails is never written and raises :class:`~registry.errors.InvalidRecordError` naming
the path. Unknown fields are ignored on read so that roles of different versions can share
one ensemble during a rolling upgrade.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from registry.errors import InvalidRecordError
from registry.layout import NAME_PATTERN

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
NodeId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
Version = Annotated[int, Field(ge=1)]
#: Model server kinds a worker can front.
BackendKind = Literal["triton", "tfserving"]
#: Protocol a route's address speaks: KServe v2 gRPC (Triton) or TF-Serving gRPC.
RouteProtocol = Literal["kserve", "tfserving"]
ModelState = Literal["LOADING", "READY", "FAILED", "UNLOADING"]
RoutingPolicy = Literal["round_robin", "least_request", "sticky"]
PluginExecutor = Literal["async", "thread", "process"]


def now() -> float:
    """Wall-clock seconds since the epoch, as stored in records."""
    return time.time()


class Record(BaseModel):
    """Base of every record: JSON (de)serialisation with errors that name the path."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    def to_bytes(self, path: str) -> bytes:
        """Re-validate and serialise; raise InvalidRecordError naming ``path`` on failure."""
        try:
            checked = type(self).model_validate(self.model_dump())
        except ValidationError as err:
            raise InvalidRecordError(path, _describe(err)) from None
        return checked.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, path: str, data: bytes) -> Self:
        """Parse a node's data; raise InvalidRecordError naming ``path`` on failure."""
        try:
            return cls.model_validate_json(data or b"{}")
        except ValidationError as err:
            raise InvalidRecordError(path, _describe(err)) from None


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "record"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


class ModelHealth(BaseModel):
    """Health of one ``model@version`` on one worker."""

    state: ModelState
    error: str | None = None
    since: float = Field(default_factory=now)


class Worker(Record):
    """``/workers/<worker_id>`` (ephemeral): a worker agent and the model server beside it."""

    worker_id: NodeId
    host: str
    backend: BackendKind
    #: gRPC address of the model server, "host:port".
    address: str
    #: The agent's own status/metrics HTTP address, "host:port".
    status_address: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    #: Memory the worker offers to models, in MiB; None means unknown/unbounded.
    capacity_memory_mb: int | None = Field(default=None, ge=0)
    state: Literal["ready", "cordoned", "draining"] = "ready"
    heartbeat: float = Field(default_factory=now)
    backend_live: bool = True
    #: Times the agent restarted the model server it launched.
    restarts: int = 0
    #: Health per ``model@version`` key.
    models: dict[str, ModelHealth] = Field(default_factory=dict)


class WorkerSpec(Record):
    """``/assignments/<worker_id>`` node data: the manager's admin state for a worker."""

    cordoned: bool = False
    draining: bool = False


class GatewayPluginStatus(BaseModel):
    """A model's plugin as one gateway sees it: the version serving and the last load error."""

    serving: str | None = None
    error: str | None = None


class ServiceHealth(BaseModel):
    """A REST service as one gateway's health probe sees it."""

    #: URLs that answered the last probe (or have not been probed yet).
    ready: list[str] = Field(default_factory=list)
    #: URLs that failed the last probe, with what the probe saw.
    down: dict[str, str] = Field(default_factory=dict)


class Gateway(Record):
    """``/gateways/<gateway_id>`` (ephemeral): one gateway process."""

    gateway_id: NodeId
    address: str
    version: str
    #: host:port of the gateway's HTTP port (Prometheus ``/metrics``, ``/healthz``); None
    #: from gateways older than the field.
    metrics_address: str | None = None
    started: float = Field(default_factory=now)
    #: Plugin state per model name: the ``name@version`` serving it and the last load error.
    plugins: dict[str, GatewayPluginStatus] = Field(default_factory=dict)
    #: Health of each REST service's URLs, by service name, as this gateway probes them.
    services: dict[str, ServiceHealth] = Field(default_factory=dict)


class Model(Record):
    """``/models/<model>``: what the manager wants served, and how calls are routed."""

    name: Name
    backend: BackendKind
    replicas: int = Field(default=1, ge=0, le=100)
    #: Plugin as "name@version", or None.
    plugin: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9._-]{0,62}@[a-z0-9][a-z0-9._-]{0,62}$"
    )
    plugin_config: dict[str, Any] = Field(default_factory=dict)
    policy: RoutingPolicy = "round_robin"
    #: Metadata header hashed by the ``sticky`` policy.
    sticky_header: str | None = None
    #: Traffic weight per version (keys are version numbers as strings). Empty: all
    #: unpinned traffic goes to the newest version with a ready instance.
    traffic: dict[str, int] = Field(default_factory=dict)
    group: Name = "default"
    state: Literal["online", "offline"] = "online"
    #: Worker labels a replica requires (placement constraints).
    constraints: dict[str, str] = Field(default_factory=dict)
    #: Memory one replica needs, in MiB (placement).
    memory_mb: int = Field(default=0, ge=0)
    description: str = ""


class ModelVersion(Record):
    """``/models/<model>/versions/<v>``: one deployable version of a model."""

    version: Version
    artifact_uri: str
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    created: float = Field(default_factory=now)
    #: Labels such as "stable" or "canary"; a label names at most one version of a model.
    labels: list[Name] = Field(default_factory=list)


class Assignment(Record):
    """``/assignments/<worker_id>/<model>@<v>``: the manager wants this version on this worker."""

    model: Name
    version: Version
    backend: BackendKind
    artifact_uri: str
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    created: float = Field(default_factory=now)


class Route(Record):
    """``/routes/<model>/<v>/<worker_id>`` (ephemeral): a READY instance the gateway may call."""

    model: Name
    version: Version
    worker_id: NodeId
    #: gRPC address of the model server, "host:port".
    address: str
    protocol: RouteProtocol


class Service(Record):
    """``/services/<name>``: a third-party REST model service."""

    name: Name
    urls: list[Annotated[str, StringConstraints(pattern=r"^https?://")]] = Field(min_length=1)
    timeout_s: float = Field(default=10.0, gt=0, le=600)
    group: Name = "default"
    #: Path the gateways probe on each URL's origin (``GET``; up when it answers 2xx). None:
    #: ``GET /`` on the origin, up when the server answers anything but 502/503/504.
    health_path: str | None = Field(default=None, pattern=r"^/[^\s#]*$", max_length=1024)


class Plugin(Record):
    """``/plugins/<name>/<version>``: an uploaded UDL plugin package."""

    name: Name
    version: Name
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    entrypoint: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    blob_url: str
    executor: PluginExecutor = "thread"
    timeout_s: float = Field(default=5.0, gt=0)
    created: float = Field(default_factory=now)


class Group(Record):
    """``/groups/<group>``: a business group; every model belongs to one."""

    name: Name
    description: str = ""
    created: float = Field(default_factory=now)
