"""The routing core without gRPC: table building, version choice, policies, failover."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import (
    ConnectionFailure,
    DeadlineExceededError,
    ModelNotFoundError,
    ModelUnavailableError,
)
from gateway.metrics import GatewayMetrics
from gateway.router import Router
from gateway.table import Instance, build_table
from registry import layout
from registry.records import Model, ModelVersion, Route, Service


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def nodes(
    model: Model | None = None,
    versions: dict[int, list[str]] | None = None,
    routes: dict[int, list[str]] | None = None,
    protocol: str = "kserve",
) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    name = model.name if model else "m"
    if model:
        out[layout.model(name)] = model.to_bytes("x")
    for v, labels in (versions or {}).items():
        out[layout.version(name, v)] = ModelVersion(
            version=v, artifact_uri="file:///x", labels=labels
        ).to_bytes("x")
    for v, addrs in (routes or {}).items():
        for i, addr in enumerate(addrs):
            out[layout.route(name, v, f"w{i}")] = Route(
                model=name,
                version=v,
                worker_id=f"w{i}",
                address=addr,
                protocol=protocol,  # type: ignore[arg-type]
            ).to_bytes("x")
    return out


def router(table_nodes: dict[str, bytes | None], **kwargs: object) -> tuple[Router, GatewayMetrics]:
    metrics = GatewayMetrics(CollectorRegistry())
    r = Router(metrics, clock=kwargs.pop("clock", Clock()), rng=random.Random(7), **kwargs)  # type: ignore[arg-type]
    r.set_table(build_table(table_nodes, 1))
    return r, metrics


def test_table_skips_invalid_records_and_keeps_orphan_routes():
    raw = nodes(None, None, {1: ["h:1"]})
    raw[layout.model("bad")] = b"{not json"
    raw[layout.service("svc")] = Service(name="svc", urls=["http://h:9/x"]).to_bytes("x")
    table = build_table(raw, 3)
    assert set(table.models) == {"m", "svc"}
    assert table.models["m"].kind == "triton"  # from the route's protocol
    assert table.models["svc"].kind == "rest"
    assert table.models["svc"].versions[1].instances[0].address == "http://h:9/x"
    assert table.generation == 3


def test_version_choice_explicit_label_and_newest_by_default():
    r, _ = router(
        nodes(
            Model(name="m", backend="triton"),
            {1: ["stable"], 2: ["canary"], 3: []},
            {1: ["a:1"], 2: ["b:1"]},
        )
    )
    assert r.resolve("m", 1).version.version == 1
    assert r.resolve("m", label="canary").version.version == 2
    assert r.resolve("m", label="1").version.version == 1
    # no weights: the newest version with a ready instance (3 has none)
    target = r.resolve("m")
    assert target.version.version == 2 and not target.pinned
    with pytest.raises(ModelNotFoundError, match="no version 7"):
        r.resolve("m", 7)
    with pytest.raises(ModelNotFoundError, match="no version labelled 'beta'"):
        r.resolve("m", label="beta")
    with pytest.raises(ModelUnavailableError, match="'m' version 3 has no ready instance"):
        r.resolve("m", 3)
    with pytest.raises(ModelNotFoundError, match="'nope' is not known"):
        r.resolve("nope")


def test_weights_split_exactly_and_skip_versions_without_instances():
    model = Model(name="m", backend="triton", traffic={"1": 80, "2": 20, "3": 50})
    r, _ = router(nodes(model, {1: [], 2: [], 3: []}, {1: ["a:1"], 2: ["b:1"]}))
    counts = Counter(r.resolve("m").version.version for _ in range(1000))
    assert counts == {1: 800, 2: 200}  # version 3 has no ready instance


def test_offline_and_empty_models_are_unavailable():
    r, _ = router(nodes(Model(name="m", backend="triton", state="offline"), {1: []}, {1: ["a:1"]}))
    with pytest.raises(ModelUnavailableError, match="offline"):
        r.resolve("m")
    r, _ = router(nodes(Model(name="m", backend="triton"), {1: []}))
    with pytest.raises(ModelUnavailableError, match="'m' has no ready instance"):
        r.resolve("m")


def test_round_robin_least_request_and_sticky():
    addrs = ["a:1", "b:1", "c:1"]
    r, _ = router(nodes(Model(name="m", backend="triton"), {1: []}, {1: addrs}))
    target = r.resolve("m")
    picks = [r.pick(target).address for _ in range(9)]  # type: ignore[union-attr]
    assert Counter(picks) == {a: 3 for a in addrs}

    r, _ = router(
        nodes(Model(name="m", backend="triton", policy="least_request"), {1: []}, {1: addrs})
    )
    target = r.resolve("m")
    r._state("a:1").in_flight = 5
    r._state("b:1").in_flight = 5
    picks = [r.pick(target).address for _ in range(50)]  # type: ignore[union-attr]
    # the idle instance wins every pair it is drawn into (two in three: 37 of the seeded 50);
    # a busy one only against the other busy one
    assert Counter(picks) == {"c:1": 37, "a:1": 7, "b:1": 6}

    model = Model(name="m", backend="triton", policy="sticky", sticky_header="x-user")
    r, _ = router(nodes(model, {1: []}, {1: addrs}))
    target = r.resolve("m")
    users = [f"user-{i}" for i in range(30)]
    first = {u: r.pick(target, key=u).address for u in users}  # type: ignore[union-attr]
    assert all(r.pick(target, key=u).address == first[u] for u in users)  # type: ignore[union-attr]
    assert len(set(first.values())) == 3
    # removing an instance only moves the keys that were on it
    r.set_table(build_table(nodes(model, {1: []}, {1: ["a:1", "b:1"]}), 2))
    target = r.resolve("m")
    moved = [u for u in users if first[u] != "c:1" and r.pick(target, key=u).address != first[u]]  # type: ignore[union-attr]
    assert moved == []


async def test_failover_retries_connection_failures_and_ejects():
    clock = Clock()
    r, metrics = router(
        nodes(Model(name="m", backend="triton"), {1: []}, {1: ["dead:1", "live:1"]}),
        clock=clock,
        eject_after=2,
        eject_seconds=5.0,
    )
    calls: list[str] = []

    async def attempt(instance: Instance, budget: float) -> str:
        calls.append(instance.address)
        if instance.address == "dead:1":
            raise ConnectionFailure(instance.address, "refused")
        return "ok"

    target = r.resolve("m")
    results = [await r.call(target, attempt, deadline=clock() + 10) for _ in range(6)]
    assert results == ["ok"] * 6
    assert calls.count("dead:1") == 2  # then ejected: never tried again
    assert r.ejected("dead:1")
    assert (
        metrics.registry.get_sample_value(
            "modelgate_gateway_ejections_total", {"address": "dead:1"}
        )
        == 1
    )
    assert metrics.registry.get_sample_value("modelgate_gateway_retries_total", {"model": "m"}) == 2
    clock.now += 6  # ejection over: tried again
    await r.call(target, attempt, deadline=clock() + 10)
    await r.call(target, attempt, deadline=clock() + 10)
    assert calls.count("dead:1") == 3


async def test_no_retry_on_application_error_and_deadline_respected():
    clock = Clock()
    r, _ = router(
        nodes(Model(name="m", backend="triton"), {1: []}, {1: ["a:1", "b:1"]}), clock=clock
    )
    tried: list[str] = []

    async def app_error(instance: Instance, budget: float) -> None:
        tried.append(instance.address)
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        await r.call(r.resolve("m"), app_error, deadline=clock() + 10)
    assert len(tried) == 1

    budgets: list[float] = []

    async def slow_failure(instance: Instance, budget: float) -> None:
        budgets.append(budget)
        clock.now += 3
        raise ConnectionFailure(instance.address, "reset")

    with pytest.raises(DeadlineExceededError):
        await r.call(r.resolve("m"), slow_failure, deadline=clock() + 5)
    assert budgets == [5.0, 2.0]  # the second attempt only gets what is left

    async def always_down(instance: Instance, budget: float) -> None:
        raise ConnectionFailure(instance.address, "refused")

    with pytest.raises(ModelUnavailableError, match="no instance answered after 2 attempt"):
        await r.call(r.resolve("m"), always_down, deadline=clock() + 10)


async def test_in_flight_is_counted_per_address():
    r, _ = router(nodes(Model(name="m", backend="triton"), {1: []}, {1: ["a:1"]}))
    entered = asyncio.Event()
    gate = asyncio.Event()

    async def wait(instance: Instance, budget: float) -> None:
        entered.set()
        await gate.wait()

    task = asyncio.ensure_future(r.call(r.resolve("m"), wait, deadline=r.clock() + 10))
    await asyncio.wait_for(entered.wait(), 10)
    assert r.addresses["a:1"].in_flight == 1
    gate.set()
    await task
    assert r.addresses["a:1"].in_flight == 0
