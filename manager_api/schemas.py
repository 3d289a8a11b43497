"""REST request and response bodies (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from manager_api.load import LoadSample
from registry.records import (
    Autoscale,
    BackendKind,
    GatewayPluginStatus,
    Limits,
    ModelHealth,
    Name,
    OutOfMemory,
    ResponseCache,
    RoutingPolicy,
    Scale,
    Shadow,
    Tolerance,
    Usage,
)

PluginRef = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}@[a-z0-9][a-z0-9._-]{0,62}$")
]
#: A plugin to set, or ``""`` to clear it (validated to None, which PATCH applies as "none").
PluginChange = Annotated[PluginRef | Literal[""] | None, AfterValidator(lambda v: v or None)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Label = Annotated[str, StringConstraints(max_length=63)]


class Body(BaseModel):
    """Base of request bodies: unknown fields are refused so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid")


class CacheBody(ResponseCache):
    """The model's response cache: answers kept per exact request, for ``ttl_s`` seconds, at
    most ``max_entries`` per gateway (least recently used go first; in Redis, by TTL)."""

    model_config = ConfigDict(extra="forbid")


class ToleranceBody(Tolerance):
    """Numeric tolerance of shadow agreement (numpy ``allclose``); 0 and 0: exact match."""

    model_config = ConfigDict(extra="forbid")


class ShadowBody(Shadow):
    """Shadow traffic: ``percent`` of the calls are copied to ``target`` (a version number of
    this model or another model's name); callers only ever see the primary's answer."""

    model_config = ConfigDict(extra="forbid")

    tolerance: ToleranceBody = Field(default_factory=ToleranceBody)


class AutoscaleBody(Autoscale):
    """Replicas follow the load between ``min_replicas`` and ``max_replicas`` (0: scale to
    zero after ``idle_seconds`` without a call, loaded again on the first call), aiming at
    ``target_in_flight`` calls in flight or ``target_calls_per_s`` calls per second per
    replica (one of them, or neither for scale to zero only). ``replicas`` is then only the
    count to start from."""

    model_config = ConfigDict(extra="forbid")


class LimitsBody(Limits):
    """Per-model isolation in each gateway: at most ``max_concurrency`` calls in flight and
    ``rate_limit`` calls per second (a token bucket of ``burst`` calls); a call over a limit
    is answered RESOURCE_EXHAUSTED naming the limit."""

    model_config = ConfigDict(extra="forbid")


def check_shadow_target(name: str, shadow: Shadow | None) -> None:
    """Refuse a model shadowing itself (by name)."""
    if shadow is not None and shadow.target == name:
        raise ValueError(
            f"shadow.target {name!r} is the model itself; name another model or a version number"
        )


class ModelCreate(Body):
    """A model to serve: where it runs, how many replicas, and how calls are routed."""

    name: Name = Field(description="Model name, also used by clients in their requests.")
    backend: BackendKind = Field(description="Model server kind the replicas run on.")
    replicas: int = Field(default=1, ge=0, le=100, description="Replicas per active version.")
    plugin: PluginRef | None = Field(default=None, description='UDL plugin "name@version".')
    plugin_config: dict[str, Any] = Field(default_factory=dict, description="Plugin config.")
    policy: RoutingPolicy = Field(default="round_robin", description="Instance selection.")
    sticky_header: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        default=None, description="Metadata header hashed by the sticky policy."
    )
    group: Name = Field(default="default", description="Business group owning the model.")
    constraints: dict[Label, Label] = Field(
        default_factory=dict, description="Worker labels every replica requires."
    )
    memory_mb: int = Field(default=0, ge=0, le=10_000_000, description="MiB per replica.")
    description: Annotated[str, StringConstraints(max_length=1000)] = ""
    state: Literal["online", "offline"] = Field(default="online", description="Initial state.")
    cache: CacheBody | None = Field(default=None, description="Response cache; none: off.")
    shadow: ShadowBody | None = Field(default=None, description="Shadow traffic; none: off.")
    autoscale: AutoscaleBody | None = Field(
        default=None, description="Replicas by load; none: a fixed `replicas`."
    )
    limits: LimitsBody | None = Field(default=None, description="Per-gateway limits; none: off.")
    pinned: bool = Field(default=False, description="Never evicted to make room for others.")

    @model_validator(mode="after")
    def _shadow_is_another_model(self) -> Self:
        check_shadow_target(self.name, self.shadow)
        return self


class ModelUpdate(Body):
    """Fields to change on a model; omitted fields keep their value."""

    backend: BackendKind | None = None
    replicas: int | None = Field(default=None, ge=0, le=100)
    plugin: PluginChange = Field(default=None, description='"name@version"; "" to clear.')
    clear_plugin: bool = Field(default=False, description="Remove the model's plugin.")
    plugin_config: dict[str, Any] | None = None
    policy: RoutingPolicy | None = None
    sticky_header: Annotated[str, StringConstraints(max_length=128)] | None = None
    group: Name | None = None
    constraints: dict[Label, Label] | None = None
    memory_mb: int | None = Field(default=None, ge=0, le=10_000_000)
    description: Annotated[str, StringConstraints(max_length=1000)] | None = None
    cache: CacheBody | None = Field(default=None, description="Response cache; null: off.")
    shadow: ShadowBody | None = Field(default=None, description="Shadow traffic; null: off.")
    autoscale: AutoscaleBody | None = Field(
        default=None, description="Replicas by load (the whole setting); null: fixed replicas."
    )
    limits: LimitsBody | None = Field(
        default=None, description="Per-gateway limits (the whole setting); null: off."
    )
    pinned: bool | None = Field(default=None, description="Never evicted to make room.")


class VersionOut(BaseModel):
    """One deployable version of a model."""

    version: int
    artifact_uri: str
    sha256: str | None
    created: float
    labels: list[str]


PLUGIN_SERVING = (
    "Per gateway id: the plugin version serving the model there and the last load error. It "
    "differs from `plugin` (the version wanted) while a new version loads or after it failed "
    "to load (the previous one keeps serving)."
)


class ModelOut(BaseModel):
    """A model as stored, with its versions and the plugin each gateway serves for it."""

    name: str
    backend: str
    replicas: int
    plugin: str | None
    plugin_config: dict[str, Any]
    policy: str
    sticky_header: str | None
    traffic: dict[str, int]
    group: str
    state: str
    constraints: dict[str, str]
    memory_mb: int
    description: str
    cache: ResponseCache | None = None
    shadow: Shadow | None = None
    autoscale: Autoscale | None = None
    limits: Limits | None = None
    pinned: bool = False
    versions: list[VersionOut] = Field(default_factory=list)
    plugin_serving: dict[str, GatewayPluginStatus] = Field(description=PLUGIN_SERVING)


class VersionCreate(Body):
    """A new version whose artifact lives at a URI (scheme from the manager's allow-list)."""

    version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="Version number; default: newest + 1."
    )
    artifact_uri: Annotated[str, StringConstraints(min_length=1, max_length=2048)] = Field(
        description="Where workers fetch the model from, e.g. file:///models/digits/1."
    )
    sha256: Sha256 | None = Field(default=None, description="Expected SHA-256 of the artifact.")
    labels: list[Name] = Field(default_factory=list, description='e.g. ["stable"].')


class LabelsUpdate(Body):
    """The complete set of labels of a version; a label moves off any other version."""

    labels: list[Name] = Field(max_length=16)


class TrafficUpdate(Body):
    """Share of unpinned traffic per version; weights sum to 100, or {} for newest-only."""

    weights: dict[
        Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,9}$")],
        Annotated[int, Field(ge=0, le=100)],
    ] = Field(description='Percent per version, each 0-100, e.g. {"1": 90, "2": 10}')


class InstanceStatus(BaseModel):
    """One assigned replica of a version on one worker."""

    worker_id: str
    registered: bool = Field(description="The worker is alive in /workers.")
    ready: bool = Field(description="A route exists: the gateway may call this instance.")
    state: str | None = Field(description="LOADING, READY, FAILED or UNLOADING per the worker.")
    error: str | None = None
    since: float | None = None


class VersionStatus(BaseModel):
    """Desired versus actual replicas of one version."""

    version: int
    labels: list[str]
    weight: int
    desired: int
    assigned: int
    ready: int
    message: str
    instances: list[InstanceStatus]


class ModelStatus(BaseModel):
    """Desired versus actual replicas of a model, per version."""

    name: str
    state: str
    backend: str
    group: str
    replicas: int
    desired: int
    ready: int
    message: str
    versions: list[VersionStatus]
    plugin: str | None = Field(description='UDL plugin wanted, "name@version".')
    plugin_serving: dict[str, GatewayPluginStatus] = Field(description=PLUGIN_SERVING)
    autoscale: Autoscale | None = Field(
        default=None, description="The model's autoscaling bounds and target; None: fixed."
    )
    scale: Scale | None = Field(
        default=None,
        description="The replicas the reconcile leader chose per active version, why and when "
        "(autoscaled models, once it chose).",
    )
    load: LoadSample | None = Field(
        default=None,
        description="The model's load over the gateways' last scrape interval (calls/s, "
        "latency, ...); None without a recent call.",
    )
    last_call: float | None = Field(
        default=None,
        description="When a gateway last saw a call for the model (Unix seconds, to a scrape "
        "interval); None: none in the last minutes.",
    )
    cold_start_s: float | None = Field(
        default=None,
        description="The latest cold start: seconds from a call that found no ready instance "
        "to its answer (a model scaled to zero), averaged over its scrape interval; None: "
        "none in the last minutes.",
    )


class WorkerOut(BaseModel):
    """A worker: what its agent reports plus the manager's admin state."""

    worker_id: str
    registered: bool = Field(description="Alive in /workers (its agent's session is open).")
    host: str | None = None
    backend: str | None = None
    address: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    capacity_memory_mb: int | None = None
    state: str | None = Field(default=None, description="State reported by the agent.")
    cordoned: bool = False
    draining: bool = False
    heartbeat: float | None = None
    assignments: list[str] = Field(default_factory=list)
    models: dict[str, ModelHealth] = Field(default_factory=dict)
    capacity_cpu: float | None = Field(default=None, description="CPU cores offered.")
    usage: Usage | None = Field(
        default=None,
        description="CPU cores and memory (MiB) the model server tree was measured to use.",
    )
    headroom: float | None = Field(
        default=None,
        description="1 minus the larger of the measured CPU and memory shares of the capacity "
        "(placement puts new replicas where it is largest); None: nothing measured against a "
        "capacity.",
    )
    model_usage: dict[str, Usage] = Field(
        default_factory=dict, description="Measured use per model@version, where known."
    )
    ooms: dict[str, OutOfMemory] = Field(
        default_factory=dict,
        description="Per model@version: the server ran out of memory with that copy loaded "
        "(placement does not put it there again).",
    )


class GroupCreate(Body):
    """A business group; every model and service belongs to one."""

    name: Name
    description: Annotated[str, StringConstraints(max_length=1000)] = ""


class ServiceCreate(Body):
    """A third-party REST model service the gateway may call."""

    name: Name
    urls: list[Annotated[str, StringConstraints(pattern=r"^https?://", max_length=2048)]] = Field(
        min_length=1, max_length=32
    )
    timeout_s: float = Field(default=10.0, gt=0, le=600)
    group: Name = "default"
    health_path: str | None = Field(
        default=None,
        pattern=r"^/[^\s#]*$",
        max_length=1024,
        description="Path the gateways GET on each URL's origin every few seconds: a URL is "
        "up while it answers 2xx. Unset: GET / on the origin, up on any answer but "
        "502/503/504. A down URL is skipped (called only if every URL is down).",
        examples=["/healthz"],
    )


class PluginOut(BaseModel):
    """An uploaded plugin version."""

    name: str
    version: str
    sha256: str
    size: int
    entrypoint: str
    blob_url: str
    executor: str
    timeout_s: float
    created: float
    used_by: list[str] = Field(default_factory=list, description="Models using it.")


class Health(BaseModel):
    """Liveness of the manager and its ZooKeeper session."""

    status: Literal["ok", "degraded"]
    zookeeper: bool
    leader: bool
    manager_id: str


class AuditEntry(BaseModel):
    """One state change: who, what, when, outcome."""

    time: float
    who: str
    role: str
    action: str
    target: str
    status: int
