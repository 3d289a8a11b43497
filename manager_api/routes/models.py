"""Models, versions, labels, traffic, online/offline and status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, File, Form, Header, Path, Request, Response, UploadFile, status

from manager_api.auth import Principal, require_group, require_role
from manager_api.context import Caller, Ctx, Manager, Tracker
from manager_api.errors import PROBLEM_RESPONSES, BadUploadError
from manager_api.schemas import (
    LabelsUpdate,
    ModelCreate,
    ModelOut,
    ModelStatus,
    ModelUpdate,
    TrafficUpdate,
    VersionCreate,
    VersionOut,
    check_shadow_target,
)
from manager_api.status import model_status, plugin_serving
from registry import Registry, Transaction, layout
from registry.errors import (
    ConflictError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from registry.layout import NAME_PATTERN
from registry.records import Gateway, Model, ModelVersion

router = APIRouter(prefix="/v1", tags=["models"], responses=PROBLEM_RESPONSES)

ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="Model name.")]
VersionNo = Annotated[int, Path(ge=1, le=2**31 - 1, description="Version number.")]
IfMatch = Annotated[
    str | None,
    Header(description="ETag from a GET: update only if the model did not change since."),
]


def get_model(reg: Registry, name: str) -> tuple[Model, int]:
    try:
        return reg.get(layout.model(name), Model)
    except NotFoundError:
        raise NotFoundError(f"model '{name}' does not exist") from None


def model_to_change(m: Manager, caller: Principal, name: str, action: str) -> tuple[Model, int]:
    """The model ``caller`` may change, checked in an order that reveals nothing.

    The role comes first: a token that may never write (viewer, internal) gets 403 whether
    or not the model exists; only then the lookup (404) and the model's group (403).
    """
    require_role(caller, "operator", action)
    model, version = get_model(m.registry, name)
    require_group(caller, model.group, action)
    return model, version


def _versions(reg: Registry, name: str) -> dict[int, ModelVersion]:
    return {
        rec.version: rec for rec in reg.read_children(layout.versions(name), ModelVersion).values()
    }


def _gateways(reg: Registry) -> dict[str, Gateway]:
    """The ``/gateways`` records (few: read once per request, never once per model)."""
    return reg.read_children(layout.GATEWAYS, Gateway)


def _out(reg: Registry, model: Model, gateways: dict[str, Gateway] | None = None) -> ModelOut:
    """``model`` with its versions and its plugin per gateway (``gateways`` when already read)."""
    versions = [VersionOut(**v.model_dump()) for _, v in sorted(_versions(reg, model.name).items())]
    serving = plugin_serving(model, _gateways(reg) if gateways is None else gateways)
    return ModelOut(**model.model_dump(), versions=versions, plugin_serving=serving)


def _check_group(reg: Registry, group: str) -> None:
    if not reg.exists(layout.group(group)):
        raise InvalidArgumentError(
            f"group '{group}' does not exist; create it first (modelgate groups create {group})"
        )


def _check_plugin(reg: Registry, plugin: str | None) -> None:
    if plugin is None:
        return
    name, _, version = plugin.partition("@")
    if not reg.exists(layout.plugin(name, version)):
        raise InvalidArgumentError(
            f"plugin '{plugin}' is not uploaded; push it first (modelgate plugins push <zip>)"
        )


def _parse_etag(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    raw = if_match.strip().removeprefix("W/").strip('"')
    if not raw.isdigit():
        raise InvalidArgumentError(f"invalid If-Match {if_match!r}: use the ETag from a GET")
    return int(raw)


#: Fields of a model update where null turns the setting off (others: null keeps it).
NULLABLE = ("plugin", "sticky_header", "cache", "shadow", "autoscale", "limits")


def modify_model(
    m: Manager,
    caller: Principal,
    name: str,
    change: Callable[[Model], Model],
    action: str,
    if_match: int | None = None,
) -> Model:
    """Read-modify-write a model with compare-and-set (retried unless If-Match was given)."""
    for _attempt in range(5):
        model, version = model_to_change(m, caller, name, action)
        if if_match is not None and if_match != version:
            raise ConflictError(
                f"model '{name}' changed since it was read (ETag {if_match}, now {version}); "
                "re-read it and retry"
            )
        new = change(model.model_copy(deep=True))
        try:
            m.registry.update(layout.model(name), new, version)
        except ConflictError:
            if if_match is not None:
                raise
            continue
        m.wrote({layout.model(name): new})
        return new
    raise ConflictError(f"model '{name}' is being changed concurrently; retry")


@router.get("/models", response_model=list[ModelOut], summary="List models")
def list_models(m: Ctx, caller: Caller, group: str | None = None) -> list[ModelOut]:
    require_role(caller, "viewer", "listing models")
    models = m.registry.read_children(layout.MODELS, Model)
    gateways = _gateways(m.registry)
    return [
        _out(m.registry, mod, gateways) for mod in models.values() if group in (None, mod.group)
    ]


@router.post(
    "/models", response_model=ModelOut, status_code=status.HTTP_201_CREATED, summary="Create"
)
def create_model(m: Ctx, caller: Caller, body: ModelCreate) -> ModelOut:
    require_group(caller, body.group, "creating a model")
    _check_group(m.registry, body.group)
    _check_plugin(m.registry, body.plugin)
    model = Model(**body.model_dump())
    try:
        m.registry.create(layout.model(body.name), model)
    except ConflictError:
        raise ConflictError(f"model '{body.name}' already exists") from None
    m.wrote({layout.model(body.name): model})
    return _out(m.registry, model)


@router.get("/models/{name}", response_model=ModelOut, summary="Get a model")
def read_model(m: Ctx, caller: Caller, name: ModelName, response: Response) -> ModelOut:
    require_role(caller, "viewer", "reading a model")
    model, version = get_model(m.registry, name)
    response.headers["ETag"] = f'"{version}"'
    return _out(m.registry, model)


@router.patch("/models/{name}", response_model=ModelOut, summary="Update a model")
def update_model(
    m: Ctx, caller: Caller, name: ModelName, body: ModelUpdate, if_match: IfMatch = None
) -> ModelOut:
    require_role(caller, "operator", "updating a model")
    fields = body.model_dump(exclude_unset=True)
    clear = fields.pop("clear_plugin", False)
    if "group" in fields and fields["group"] is not None:
        require_group(caller, fields["group"], "moving a model to a group")
        _check_group(m.registry, fields["group"])
    if fields.get("plugin") is not None:
        _check_plugin(m.registry, fields["plugin"])
    try:
        check_shadow_target(name, body.shadow)
    except ValueError as err:
        raise InvalidArgumentError(str(err)) from None

    def change(model: Model) -> Model:
        for key, value in fields.items():
            if value is None and key not in NULLABLE:
                continue
            setattr(model, key, value)
        if clear:
            model.plugin = None
        return model

    model = modify_model(m, caller, name, change, "updating a model", _parse_etag(if_match))
    return _out(m.registry, model)


@router.delete("/models/{name}", status_code=204, summary="Delete a model and its versions")
def delete_model(m: Ctx, caller: Caller, name: ModelName) -> Response:
    model_to_change(m, caller, name, "deleting a model")
    m.registry.delete(layout.model(name), recursive=True)
    m.wrote({layout.model(name): None})
    return Response(status_code=204)


def _set_state(m: Manager, caller: Principal, name: str, state: str) -> ModelOut:
    def change(model: Model) -> Model:
        model.state = state  # type: ignore[assignment]
        return model

    return _out(m.registry, modify_model(m, caller, name, change, f"taking a model {state}"))


@router.post("/models/{name}:online", response_model=ModelOut, summary="Place replicas again")
def online(m: Ctx, caller: Caller, name: ModelName) -> ModelOut:
    return _set_state(m, caller, name, "online")


@router.post("/models/{name}:offline", response_model=ModelOut, summary="Remove all replicas")
def offline(m: Ctx, caller: Caller, name: ModelName) -> ModelOut:
    return _set_state(m, caller, name, "offline")


@router.put("/models/{name}/traffic", response_model=ModelOut, summary="Set traffic weights")
def set_traffic(m: Ctx, caller: Caller, name: ModelName, body: TrafficUpdate) -> ModelOut:
    require_role(caller, "operator", "setting traffic")
    weights = {str(int(k)): w for k, w in body.weights.items()}
    if weights and sum(weights.values()) != 100:
        raise InvalidArgumentError(
            f"traffic weights must sum to 100 (got {sum(weights.values())}), or be empty to "
            "send all traffic to the newest version"
        )
    model_to_change(m, caller, name, "setting traffic")
    known = _versions(m.registry, name)
    missing = sorted(int(v) for v in weights if int(v) not in known)
    if missing:
        raise InvalidArgumentError(f"model '{name}' has no version(s) {missing}")

    def change(model: Model) -> Model:
        model.traffic = {k: w for k, w in weights.items() if w > 0}
        return model

    return _out(m.registry, modify_model(m, caller, name, change, "setting traffic"))


# -- versions ------------------------------------------------------------------------------


@router.get("/models/{name}/versions", response_model=list[VersionOut], summary="List versions")
def list_versions(m: Ctx, caller: Caller, name: ModelName) -> list[VersionOut]:
    require_role(caller, "viewer", "listing versions")
    get_model(m.registry, name)
    return [VersionOut(**v.model_dump()) for _, v in sorted(_versions(m.registry, name).items())]


def check_uri(m: Manager, uri: str) -> str:
    """Refuse artifact URIs whose scheme is not allowed (or that are not URIs at all)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise InvalidArgumentError(f"invalid artifact URI {uri!r}") from None
    allowed = m.settings.uri_schemes
    if parts.scheme not in allowed:
        raise InvalidArgumentError(
            f"artifact URI {uri!r} has scheme {parts.scheme or '(none)'!r}; "
            f"allowed: {', '.join(allowed)}"
        )
    if parts.scheme == "file" and not parts.path.startswith("/"):
        raise InvalidArgumentError(f"file URI {uri!r} needs an absolute path: file:///...")
    if parts.scheme != "file" and not parts.netloc:
        raise InvalidArgumentError(f"artifact URI {uri!r} has no host")
    if any(ord(c) < 33 for c in uri):
        raise InvalidArgumentError(f"artifact URI {uri!r} contains spaces or control characters")
    return uri


def _add_version(
    m: Manager,
    caller: Principal,
    name: str,
    number: int | None,
    uri: str,
    sha256: str | None,
    labels: list[str],
) -> VersionOut:
    model_to_change(m, caller, name, "adding a version")
    known = _versions(m.registry, name)
    number = number or (max(known, default=0) + 1)
    if number in known:
        raise ConflictError(f"model '{name}' already has version {number}")
    record = ModelVersion(version=number, artifact_uri=uri, sha256=sha256, labels=labels)
    path = layout.version(name, number)

    def create(txn: Transaction) -> ModelVersion:
        txn.create(path, record)
        return record

    try:
        _, moved = _write_labelled(m.registry, name, number, labels, create)
    except ConflictError:
        if m.registry.exists(path):
            raise ConflictError(f"model '{name}' already has version {number}") from None
        raise
    m.wrote({path: record, **moved})
    return VersionOut(**record.model_dump())


#: Read-modify-write rounds of a label move before a concurrent writer wins (409).
_LABEL_TRIES = 3


def _write_labelled(
    reg: Registry,
    name: str,
    number: int,
    labels: list[str],
    write: Callable[[Transaction], ModelVersion],
) -> tuple[ModelVersion, dict[str, ModelVersion]]:
    """``write`` (the version's own write, added to a transaction) and, in the same
    transaction, ``labels`` taken off every other version: a label names at most one version,
    and no reader ever sees it on two or on none. A version changed meanwhile makes the whole
    transaction fail; it is read and tried again, up to ``_LABEL_TRIES`` times (then 409).

    Returns the version's record as ``write`` wrote it, and the other versions rewritten,
    by path."""
    tries = 0
    while True:
        txn = reg.transaction()
        record = write(txn)
        moved: dict[str, ModelVersion] = {}
        for other, rec in _versions(reg, name).items():
            if other == number or not set(rec.labels) & set(labels):
                continue
            path = layout.version(name, other)
            current, ver = reg.get(path, ModelVersion)
            current.labels = [lab for lab in current.labels if lab not in labels]
            txn.update(path, current, ver)
            moved[path] = current
        try:
            txn.commit()
            return record, moved
        except ConflictError:
            tries += 1
            if tries == _LABEL_TRIES:
                raise


@router.post(
    "/models/{name}/versions",
    response_model=VersionOut,
    status_code=201,
    summary="Add a version from a URI",
)
def create_version(m: Ctx, caller: Caller, name: ModelName, body: VersionCreate) -> VersionOut:
    check_uri(m, body.artifact_uri)
    return _add_version(
        m, caller, name, body.version, body.artifact_uri, body.sha256, sorted(set(body.labels))
    )


@router.post(
    "/models/{name}/versions:upload",
    response_model=VersionOut,
    status_code=201,
    summary="Add a version from an uploaded archive (stored in the blob store)",
)
def upload_version(
    request: Request,
    m: Ctx,
    caller: Caller,
    name: ModelName,
    file: Annotated[UploadFile, File(description="Model archive (.tar.gz or .zip).")],
    version: Annotated[int | None, Form(ge=1, le=2**31 - 1)] = None,
    labels: Annotated[str, Form(max_length=1000, description="Comma-separated.")] = "",
) -> VersionOut:
    model_to_change(m, caller, name, "uploading a version")
    label_list = sorted({lab.strip() for lab in labels.split(",") if lab.strip()})
    for lab in label_list:
        layout.check_name("label", lab)
    filename = file.filename or ""
    if not filename.endswith((".tar.gz", ".tgz", ".tar", ".zip")):
        raise BadUploadError(
            f"archive {filename!r} must be a .tar.gz, .tgz, .tar or .zip of the model directory"
        )
    sha, size = m.blobs.put(file.file, m.settings.max_archive_mb << 20, "model archive")
    if size == 0:
        raise BadUploadError("the uploaded archive is empty")
    m.metrics.blob_bytes.inc(size)
    uri = blob_url(m, request, sha)
    return _add_version(m, caller, name, version, uri, sha, label_list)


def blob_url(m: Manager, request: Request, sha: str) -> str:
    base = m.settings.public_url or str(request.base_url)
    return f"{base.rstrip('/')}/v1/blobs/{sha}"


@router.delete("/models/{name}/versions/{version}", status_code=204, summary="Delete a version")
def delete_version(m: Ctx, caller: Caller, name: ModelName, version: VersionNo) -> Response:
    model, _ = model_to_change(m, caller, name, "deleting a version")
    if model.traffic.get(str(version), 0) > 0:
        raise FailedPreconditionError(
            f"version {version} of '{name}' receives {model.traffic[str(version)]}% of the "
            "traffic; move the traffic first (modelgate models traffic)"
        )
    if not m.registry.delete(layout.version(name, version)):
        raise NotFoundError(f"model '{name}' has no version {version}")
    m.wrote({layout.version(name, version): None})
    return Response(status_code=204)


@router.put(
    "/models/{name}/versions/{version}/labels",
    response_model=VersionOut,
    summary="Set the labels of a version (a label moves off other versions)",
)
def set_labels(
    m: Ctx, caller: Caller, name: ModelName, version: VersionNo, body: LabelsUpdate
) -> VersionOut:
    model_to_change(m, caller, name, "labelling a version")
    path = layout.version(name, version)
    labels = sorted(set(body.labels))

    def relabel(txn: Transaction) -> ModelVersion:
        try:
            rec, ver = m.registry.get(path, ModelVersion)
        except NotFoundError:
            raise NotFoundError(f"model '{name}' has no version {version}") from None
        rec.labels = labels
        txn.update(path, rec, ver)
        return rec

    rec, moved = _write_labelled(m.registry, name, version, labels, relabel)
    m.wrote({path: rec, **moved})
    return VersionOut(**rec.model_dump())


# -- status --------------------------------------------------------------------------------


@router.get(
    "/models/{name}/status",
    response_model=ModelStatus,
    summary="Replica status, the replicas wanted and why, and the current load",
)
def read_status(m: Ctx, caller: Caller, tracker: Tracker, name: ModelName) -> ModelStatus:
    require_role(caller, "viewer", "reading status")
    gateways = _gateways(m.registry)
    load = tracker.models().get(name)
    with m.view.read() as state:
        if name not in state.models:
            raise NotFoundError(f"model '{name}' does not exist")
        shortfalls = state.placement({name}).shortfalls
        return model_status(state, state.models[name], shortfalls, gateways, load)


@router.get("/status", response_model=list[ModelStatus], summary="Status of every model")
def read_all_status(m: Ctx, caller: Caller, tracker: Tracker) -> list[ModelStatus]:
    require_role(caller, "viewer", "reading status")
    gateways = _gateways(m.registry)
    loads = tracker.models()
    state = m.view.copy()
    shortfalls = state.placement().shortfalls
    return [
        model_status(state, mod, shortfalls, gateways, loads.get(name))
        for name, mod in sorted(state.models.items())
    ]
