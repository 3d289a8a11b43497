"""Desired versus actual: replicas, aggregated from /models, /assignments, /routes, /workers
(a :class:`ClusterState`), and plugins, from /gateways.

One model's status costs O(that model + workers): its placement is computed with every other
model where it is assigned (:meth:`ClusterState.placement`).
"""

from __future__ import annotations

from collections.abc import Mapping

from manager_api.load import ModelLoad
from manager_api.placement import Key, Shortfall
from manager_api.schemas import InstanceStatus, ModelStatus, VersionStatus
from manager_api.state import ClusterState
from registry.records import Gateway, GatewayPluginStatus, Model


def plugin_serving(model: Model, gateways: Mapping[str, Gateway]) -> dict[str, GatewayPluginStatus]:
    """Per gateway id: the plugin version serving ``model`` there and its last load error.

    While the model wants a plugin every gateway is listed (one that has not reported the
    model yet serves nothing); without one, only the gateways still reporting a plugin.
    """
    out: dict[str, GatewayPluginStatus] = {}
    for gateway_id, gateway in sorted(gateways.items()):
        reported = gateway.plugins.get(model.name)
        if reported is not None:
            out[gateway_id] = reported
        elif model.plugin is not None:
            out[gateway_id] = GatewayPluginStatus()
    return out


def model_status(
    state: ClusterState,
    model: Model,
    shortfalls: Mapping[Key, Shortfall],
    gateways: Mapping[str, Gateway],
    load: ModelLoad | None = None,
) -> ModelStatus:
    """``shortfalls``: of a placement of ``model`` (or of every model); ``load``: the
    model's recent load samples."""
    versions = state.versions.get(model.name, {})
    active = set(state.active_versions(model))
    assigned_on = state.holders.get(model.name, {})
    out: list[VersionStatus] = []
    for v in sorted(set(versions) | set(assigned_on)):
        key = (model.name, v)
        desired = state.replicas_of(model) if v in active else 0
        routes = state.routes.get(key, set())
        instances = []
        for worker_id in sorted(assigned_on.get(v, set()) | routes):
            worker = state.workers.get(worker_id)
            health = worker.models.get(f"{model.name}@{v}") if worker else None
            instances.append(
                InstanceStatus(
                    worker_id=worker_id,
                    registered=worker is not None,
                    ready=worker_id in routes,
                    state=health.state if health else None,
                    error=health.error if health else None,
                    since=health.since if health else None,
                )
            )
        assigned = len(assigned_on.get(v, set()))
        ready = len(routes)
        errors = sorted({f"{i.worker_id}: {i.error}" for i in instances if i.error})
        if key in shortfalls:
            message = str(shortfalls[key])
        elif desired == 0 and v in active:
            message = "scaled to zero" + (
                ": replicas are being removed" if assigned or ready else " (loads on a call)"
            )
        elif desired == 0 and (assigned or ready):
            message = "not active: replicas are being removed"
        elif desired == 0:
            message = "not active" if model.state == "online" else "offline"
        elif assigned < desired:
            message = f"{assigned}/{desired} assigned: reconciling"
        elif ready < desired:
            message = f"{ready}/{desired} ready: loading"
        else:
            message = "ok"
        if errors:
            message += "; errors: " + "; ".join(errors)
        rec = versions.get(v)
        out.append(
            VersionStatus(
                version=v,
                labels=list(rec.labels) if rec else [],
                weight=model.traffic.get(str(v), 0),
                desired=desired,
                assigned=assigned,
                ready=ready,
                message=message,
                instances=instances,
            )
        )
    desired_total = sum(vs.desired for vs in out)
    ready_total = sum(min(vs.ready, vs.desired) for vs in out)
    if model.state == "offline":
        summary = "offline"
    elif not versions:
        summary = "no versions: add one (POST /v1/models/{name}/versions)".replace(
            "{name}", model.name
        )
    elif all(vs.message == "ok" for vs in out if vs.desired):
        summary = "ok"
    else:
        summary = "; ".join(f"v{vs.version}: {vs.message}" for vs in out if vs.message != "ok")
    return ModelStatus(
        name=model.name,
        state=model.state,
        backend=model.backend,
        group=model.group,
        replicas=model.replicas,
        desired=desired_total,
        ready=ready_total,
        message=summary,
        versions=out,
        plugin=model.plugin,
        plugin_serving=plugin_serving(model, gateways),
        autoscale=model.autoscale,
        scale=state.scales.get(model.name),
        load=load.samples[-1] if load is not None and load.samples else None,
        last_call=load.last_call if load is not None else None,
        cold_start_s=next(
            (x.cold_start_s for x in reversed(load.samples) if x.cold_start_s is not None), None
        )
        if load is not None
        else None,
    )
