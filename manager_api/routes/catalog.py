"""Groups and third-party REST services."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from manager_api.auth import require_group, require_role
from manager_api.context import Caller, Ctx
from manager_api.errors import PROBLEM_RESPONSES
from manager_api.schemas import GroupCreate, ServiceCreate
from registry import layout
from registry.errors import (
    ConflictError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from registry.layout import NAME_PATTERN
from registry.records import Group, Model, Service

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)

Name = Annotated[str, Path(pattern=NAME_PATTERN)]


@router.get("/groups", response_model=list[Group], tags=["groups"], summary="List groups")
def list_groups(m: Ctx, caller: Caller) -> list[Group]:
    require_role(caller, "viewer", "listing groups")
    return [g for _, g in sorted(m.registry.read_children(layout.GROUPS, Group).items())]


@router.post(
    "/groups", response_model=Group, status_code=201, tags=["groups"], summary="Create a group"
)
def create_group(m: Ctx, caller: Caller, body: GroupCreate) -> Group:
    require_role(caller, "admin", "creating a group")
    group = Group(name=body.name, description=body.description)
    try:
        m.registry.create(layout.group(body.name), group)
    except ConflictError:
        raise ConflictError(f"group '{body.name}' already exists") from None
    return group


@router.get("/groups/{name}", response_model=Group, tags=["groups"], summary="Get a group")
def read_group(m: Ctx, caller: Caller, name: Name) -> Group:
    require_role(caller, "viewer", "reading a group")
    group = m.registry.read(layout.group(name), Group)
    if group is None:
        raise NotFoundError(f"group '{name}' does not exist")
    return group


@router.delete("/groups/{name}", status_code=204, tags=["groups"], summary="Delete a group")
def delete_group(m: Ctx, caller: Caller, name: Name) -> Response:
    require_role(caller, "admin", "deleting a group")
    if not m.registry.exists(layout.group(name)):
        raise NotFoundError(f"group '{name}' does not exist")
    models = [
        n for n, mod in m.registry.read_children(layout.MODELS, Model).items() if mod.group == name
    ]
    services = [
        n for n, s in m.registry.read_children(layout.SERVICES, Service).items() if s.group == name
    ]
    if models or services:
        raise FailedPreconditionError(
            f"group '{name}' still has models {models} and services {services}; "
            "delete or move them first"
        )
    m.registry.delete(layout.group(name))
    return Response(status_code=204)


@router.get("/services", response_model=list[Service], tags=["services"], summary="List services")
def list_services(m: Ctx, caller: Caller) -> list[Service]:
    require_role(caller, "viewer", "listing services")
    return [s for _, s in sorted(m.registry.read_children(layout.SERVICES, Service).items())]


@router.post(
    "/services",
    response_model=Service,
    status_code=201,
    tags=["services"],
    summary="Register a REST model service",
)
def create_service(m: Ctx, caller: Caller, body: ServiceCreate) -> Service:
    require_group(caller, body.group, "registering a service")
    if not m.registry.exists(layout.group(body.group)):
        raise InvalidArgumentError(f"group '{body.group}' does not exist; create it first")
    service = Service(**body.model_dump())
    try:
        m.registry.create(layout.service(body.name), service)
    except ConflictError:
        raise ConflictError(f"service '{body.name}' already exists") from None
    return service


@router.get("/services/{name}", response_model=Service, tags=["services"], summary="Get a service")
def read_service(m: Ctx, caller: Caller, name: Name) -> Service:
    require_role(caller, "viewer", "reading a service")
    service = m.registry.read(layout.service(name), Service)
    if service is None:
        raise NotFoundError(f"service '{name}' does not exist")
    return service


@router.delete("/services/{name}", status_code=204, tags=["services"], summary="Delete")
def delete_service(m: Ctx, caller: Caller, name: Name) -> Response:
    require_role(caller, "operator", "deleting a service")
    service = m.registry.read(layout.service(name), Service)
    if service is None:
        raise NotFoundError(f"service '{name}' does not exist")
    require_group(caller, service.group, "deleting a service")
    m.registry.delete(layout.service(name))
    return Response(status_code=204)
