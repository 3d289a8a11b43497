"""Per-model load from the gateways (calls/s, error rate, p50/p99 latency over recent minutes)."""

from __future__ import annotations

from fastapi import APIRouter

from manager_api.auth import require_role
from manager_api.context import Caller, Ctx, Tracker
from manager_api.errors import PROBLEM_RESPONSES
from manager_api.load import ModelLoad
from manager_api.routes.models import ModelName
from registry import layout
from registry.errors import NotFoundError

router = APIRouter(prefix="/v1", tags=["load"], responses=PROBLEM_RESPONSES)


@router.get(
    "/load",
    response_model=list[ModelLoad],
    summary="Load of every model the gateways served recently, oldest sample first",
)
def read_all_load(caller: Caller, tracker: Tracker) -> list[ModelLoad]:
    require_role(caller, "viewer", "reading load")
    return list(tracker.models().values())


@router.get(
    "/models/{name}/load",
    response_model=ModelLoad,
    summary="Load of one model: one sample per scrape of the gateways (empty without calls)",
)
def read_load(m: Ctx, caller: Caller, tracker: Tracker, name: ModelName) -> ModelLoad:
    require_role(caller, "viewer", "reading load")
    if not m.registry.exists(layout.model(name)):
        raise NotFoundError(f"model '{name}' does not exist")
    return tracker.models().get(name, ModelLoad(model=name, samples=[]))
