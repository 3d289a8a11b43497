"""Typed records stored in ZooKeeper nodes, serialised as JSON.

Every record validates on construction and again right before it is written; a record
that fails is never written and raises :class:`~registry.errors.InvalidRecordError` naming
the path. Unknown fields are ignored on read so that roles of different versions can share
one ensemble during a rolling upgrade.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

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


class Usage(BaseModel):
    """Resources a process tree uses, measured."""

    #: CPU cores busy over the last measuring interval (1.0 = one core).
    cpu: float = Field(ge=0)
    #: Resident memory in MiB.
    memory_mb: float = Field(ge=0)


#: Measured usage counts as changed when it moves by more than this share of the capacity
#: (or, without a capacity, of its last value): the worker agent writes its record, and the
#: manager's placement takes the new figure in, only past this step, so heartbeats with
#: steady usage cost nothing.
USAGE_STEP = 0.1


def steady(new: float | None, old: float | None, capacity: float | None) -> bool:
    """``new`` is within one :data:`USAGE_STEP` of ``old`` (None: unknown, steady only as
    None)."""
    if new is None or old is None:
        return new is old
    return abs(new - old) <= USAGE_STEP * (capacity if capacity else old)


class OutOfMemory(BaseModel):
    """The model server died of (or was killed for) lack of memory with this copy loaded."""

    at: float = Field(default_factory=now)
    #: Memory the server used just before (MiB), and the worker's capacity then.
    memory_mb: float = Field(ge=0)
    capacity_mb: float | None = None


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
    #: CPU cores the worker offers to models; None means unknown (the host's count).
    capacity_cpu: float | None = Field(default=None, gt=0)
    #: What the model server really uses (the server process and its children, measured by
    #: the agent at each heartbeat); None until measured or when it is not launched here.
    usage: Usage | None = None
    #: Measured use per ``model@version`` key, where the backend tells one model's share
    #: (Triton's Python-backend stub processes are one per model).
    model_usage: dict[str, Usage] = Field(default_factory=dict)
    #: Per ``model@version`` key: the server ran out of memory after that copy was loaded.
    ooms: dict[str, OutOfMemory] = Field(default_factory=dict)


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


class ResponseCache(BaseModel):
    """A model's response cache (gateway/cache.py): answers kept per exact request."""

    #: Seconds an answer stays cached.
    ttl_s: float = Field(gt=0, le=7 * 86400)
    #: Answers kept per gateway (least recently used go first); Redis keeps them by TTL.
    max_entries: int = Field(default=1000, ge=1, le=1_000_000)


class Tolerance(BaseModel):
    """How close a shadow's numeric outputs must be to the primary's to agree (numpy
    ``allclose``: ``|shadow - primary| <= absolute + relative * |primary|``); 0 and 0 is an
    exact match. Non-numeric outputs always compare exactly."""

    absolute: float = Field(default=0.0, ge=0)
    relative: float = Field(default=0.0, ge=0)


class Shadow(BaseModel):
    """Shadow traffic (gateway/shadow.py): a copy of some calls goes to ``target`` too."""

    #: Another version of the same model (a number; digits are read as one) or another model
    #: taking the same inputs.
    target: Annotated[
        Version | Name,
        BeforeValidator(lambda v: int(v) if isinstance(v, str) and v.isdigit() else v),
    ]
    #: Share of calls copied, in percent.
    percent: float = Field(gt=0, le=100)
    tolerance: Tolerance = Field(default_factory=Tolerance)


class Autoscale(BaseModel):
    """Replicas follow the load between ``min_replicas`` and ``max_replicas``
    (manager_api/autoscale.py); the chosen count is kept in ``/scale/<model>``."""

    min_replicas: int = Field(default=1, ge=0, le=100)
    max_replicas: int = Field(default=1, ge=1, le=100)
    #: Target average calls in flight per replica (one of the two targets, or neither when
    #: only scale to zero is wanted).
    target_in_flight: float | None = Field(default=None, gt=0)
    #: Target calls per second per replica.
    target_calls_per_s: float | None = Field(default=None, gt=0)
    #: With ``min_replicas`` 0: seconds without a call before the model goes to zero.
    idle_seconds: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}"
            )
        if self.target_in_flight is not None and self.target_calls_per_s is not None:
            raise ValueError("set target_in_flight or target_calls_per_s, not both")
        return self


class Limits(BaseModel):
    """Per-model isolation in the gateway: calls over a limit get RESOURCE_EXHAUSTED."""

    #: Calls of this model in flight at once, per gateway.
    max_concurrency: int | None = Field(default=None, ge=1, le=1_000_000)
    #: Calls per second admitted per gateway (a token bucket).
    rate_limit: float | None = Field(default=None, gt=0, le=1_000_000)
    #: Calls the bucket may admit at once after a quiet spell; None: one second's worth.
    burst: int | None = Field(default=None, ge=1, le=1_000_000)


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
    #: Response cache; None: off.
    cache: ResponseCache | None = None
    #: Shadow traffic; None: off.
    shadow: Shadow | None = None
    #: Replicas by load (then ``replicas`` is only the count to start from); None: fixed.
    autoscale: Autoscale | None = None
    #: Concurrency and rate limits per gateway; None: none.
    limits: Limits | None = None
    #: Never evicted to make room for another model (memory-aware density).
    pinned: bool = False

    @model_validator(mode="after")
    def _shadow_is_another_model(self) -> Self:
        if self.shadow is not None and self.shadow.target == self.name:
            raise ValueError(
                f"shadow.target: {self.name!r} is the model itself; name another model or a "
                "version number"
            )
        return self


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


class Scale(Record):
    """``/scale/<model>``: the replica count the reconcile leader chose for an autoscaled
    model, and why (written only by the leader)."""

    model: Name
    replicas: int = Field(ge=0, le=100)
    reason: str
    changed: float = Field(default_factory=now)
    #: Last time a gateway saw a call for the model (from the load samples), if ever.
    last_call: float | None = None


class Wake(Record):
    """``/wake/<model>``: a gateway holds calls for a model that has no ready instance
    (scale to zero); the leader scales it up and deletes the node."""

    model: Name
    gateway_id: NodeId
    at: float = Field(default_factory=now)
    #: Calls waiting in that gateway when written.
    waiting: int = Field(default=1, ge=0)


class Group(Record):
    """``/groups/<group>``: a business group; every model belongs to one."""

    name: Name
    description: str = ""
    created: float = Field(default_factory=now)
