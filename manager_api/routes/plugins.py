"""Plugins: upload (validated zip into the blob store), list, delete (refused while used)."""

from __future__ import annotations

import io
from typing import Annotated

from fastapi import APIRouter, File, Path, Request, Response, UploadFile

from manager_api.auth import require_role
from manager_api.context import Caller, Ctx, Manager
from manager_api.errors import PROBLEM_RESPONSES, PayloadTooLargeError
from manager_api.routes.models import blob_url
from manager_api.schemas import PluginOut
from registry import layout
from registry.errors import ConflictError, FailedPreconditionError, NotFoundError
from registry.layout import NAME_PATTERN
from registry.records import Model, Plugin
from udl.package import inspect_package

router = APIRouter(prefix="/v1", tags=["plugins"], responses=PROBLEM_RESPONSES)

PluginName = Annotated[str, Path(pattern=NAME_PATTERN, description="Plugin name.")]
PluginVersion = Annotated[str, Path(pattern=NAME_PATTERN, description="Plugin version.")]


def _users(m: Manager) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for name, model in sorted(m.registry.read_children(layout.MODELS, Model).items()):
        if model.plugin:
            users.setdefault(model.plugin, []).append(name)
    return users


def _out(p: Plugin, users: dict[str, list[str]]) -> PluginOut:
    return PluginOut(**p.model_dump(), used_by=users.get(f"{p.name}@{p.version}", []))


def _all(m: Manager) -> list[Plugin]:
    out: list[Plugin] = []
    for name in m.registry.children(layout.PLUGINS):
        try:
            path = layout.plugin_versions(name)
        except Exception:  # not a valid name: skip foreign nodes
            continue
        out.extend(p for _, p in sorted(m.registry.read_children(path, Plugin).items()))
    return out


@router.post("/plugins", response_model=PluginOut, status_code=201, summary="Upload a plugin zip")
def push_plugin(
    request: Request,
    m: Ctx,
    caller: Caller,
    file: Annotated[UploadFile, File(description="Zip with plugin.toml at its root.")],
) -> PluginOut:
    require_role(caller, "operator", "uploading a plugin")
    limit = m.settings.max_plugin_mb << 20
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"plugin package is larger than the limit of {m.settings.max_plugin_mb} MiB"
        )
    # NOTE: the same check the gateway runs before loading (udl.package), so an upload
    # that passes here cannot fail there for packaging reasons.
    manifest = inspect_package(data, limit)
    path = layout.plugin(manifest.name, manifest.version)
    existing = m.registry.read(path, Plugin)
    sha, size = m.blobs.put(io.BytesIO(data), limit, "plugin package")
    if existing is not None:
        if existing.sha256 == sha:
            return _out(existing, _users(m))
        raise ConflictError(
            f"plugin {manifest.name}@{manifest.version} exists with different content; "
            "bump the version in plugin.toml"
        )
    m.metrics.blob_bytes.inc(size)
    record = Plugin(
        name=manifest.name,
        version=manifest.version,
        sha256=sha,
        size=size,
        entrypoint=manifest.entrypoint,
        blob_url=blob_url(m, request, sha),
        executor=manifest.executor,
        timeout_s=manifest.timeout_s,
    )
    try:
        m.registry.create(path, record)
    except ConflictError:
        raise ConflictError(
            f"plugin {manifest.name}@{manifest.version} was uploaded concurrently; retry"
        ) from None
    return _out(record, _users(m))


@router.get("/plugins", response_model=list[PluginOut], summary="List plugins")
def list_plugins(m: Ctx, caller: Caller) -> list[PluginOut]:
    require_role(caller, "viewer", "listing plugins")
    users = _users(m)
    return [_out(p, users) for p in _all(m)]


@router.get("/plugins/{name}", response_model=list[PluginOut], summary="Versions of a plugin")
def read_plugin(m: Ctx, caller: Caller, name: PluginName) -> list[PluginOut]:
    require_role(caller, "viewer", "reading a plugin")
    found = m.registry.read_children(layout.plugin_versions(name), Plugin)
    if not found:
        raise NotFoundError(f"plugin '{name}' does not exist")
    users = _users(m)
    return [_out(p, users) for _, p in sorted(found.items())]


@router.delete("/plugins/{name}/{version}", status_code=204, summary="Delete a plugin version")
def delete_plugin(m: Ctx, caller: Caller, name: PluginName, version: PluginVersion) -> Response:
    require_role(caller, "admin", "deleting a plugin")
    ref = f"{name}@{version}"
    path = layout.plugin(name, version)
    record = m.registry.read(path, Plugin)
    if record is None:
        raise NotFoundError(f"plugin {ref} does not exist")
    users = _users(m).get(ref, [])
    if users:
        raise FailedPreconditionError(
            f"plugin {ref} is used by model(s) {', '.join(users)}; change their plugin first"
        )
    m.registry.delete(path)
    if not m.registry.children(layout.plugin_versions(name)):
        m.registry.delete(layout.plugin_versions(name))
    still_used = any(p.sha256 == record.sha256 for p in _all(m))
    if not still_used:
        m.blobs.delete(record.sha256)
    return Response(status_code=204)
