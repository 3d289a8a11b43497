"""Autoscaling, scale to zero and eviction on the real stack: ``python -m manager_api`` with short
autoscaling periods, worker agents in front of real Triton servers, and a real gateway; models
are written to ZooKeeper as the API writes them, and called through the gateway (KServe
ModelInfer).

- by load: ``slow`` (~50 ms per call, target 1 call in flight per replica) driven at 3 calls
  at a time -> 3 replicas, back to 1 once the load stops;
- scale to zero: ``cold`` (``min_replicas`` 0) at zero -> the first call waits and answers;
  idle -> back to zero, and the next call wakes it again;
- density: 5 models of 40 MiB (``min_replicas`` 0) and two workers of 100 MiB (two copies
  each), called in turns -> every call answers; least recently used copies make room.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import tritonclient.grpc as triton_grpc

from examples.models import write_add_one_artifact
from protos.modelgate.v1 import gateway_pb2, gateway_pb2_grpc
from registry import Registry, layout
from registry.records import Autoscale, Model, ModelVersion, Scale
from tests.e2e.load import Load, infer
from tests.manager_api.conftest import auth
from tests.servers.gateway import GatewayProcess
from tests.servers.stack import agent_process, manager_process
from tests.servers.zk import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

#: Short periods so that a test sees every kind of decision within a minute or two.
AUTOSCALING = {
    "MODELGATE_MANAGER_RECONCILE_INTERVAL_S": "0.5",
    "MODELGATE_MANAGER_LOAD_INTERVAL_S": "0.5",
    "MODELGATE_MANAGER_AUTOSCALE_INTERVAL_S": "0.5",
    "MODELGATE_MANAGER_AUTOSCALE_UP_COOLDOWN_S": "1",
    "MODELGATE_MANAGER_AUTOSCALE_DOWN_WINDOW_S": "4",
    "MODELGATE_MANAGER_EVICT_IDLE_S": "1",
}
WORKERS = ("wa", "wb", "wc")


@dataclass
class Stack:
    registry: Registry
    manager_url: str
    gateway: str
    audit_log: Path
    tmp: Path

    def deploy(self, name: str, auto: Autoscale, *, replicas: int, memory_mb: int = 0,
               delay_s: float = 0.0) -> None:  # fmt: skip
        """An ``add_one`` model (``delay_s`` per call) with ``auto``, version 1 from a
        ``file://`` directory."""
        folder = write_add_one_artifact(self.tmp / "artifacts" / name, name, delay_s=delay_s)
        self.registry.put(
            layout.model(name),
            Model(name=name, backend="triton", replicas=replicas, memory_mb=memory_mb,
                  autoscale=auto),
        )  # fmt: skip
        self.registry.put(
            layout.version(name, 1), ModelVersion(version=1, artifact_uri=f"file://{folder}")
        )
        wait_for(lambda: self.known(name), what=f"the gateway to know {name} version 1")

    def known(self, name: str) -> bool:
        """The gateway lists ``name`` with its version 1 (a call would not get NOT_FOUND)."""
        with grpc.insecure_channel(self.gateway) as channel:
            listed = gateway_pb2_grpc.GatewayStub(channel).ListModels(
                gateway_pb2.ListModelsRequest(), timeout=10
            )
        return any(m.name == name and any(v.version == "1" for v in m.versions)
                   for m in listed.models)  # fmt: skip

    def routes(self, name: str) -> set[str]:
        return set(self.registry.children(layout.version_routes(name, 1)))

    def scale(self, name: str) -> Scale | None:
        return self.registry.read(layout.scale(name), Scale)

    def decisions(self, name: str) -> list[str]:
        """The autoscaler's audit entries for ``name`` (their actions), oldest first."""
        entries = [json.loads(line) for line in self.audit_log.read_text().splitlines()]
        return [
            e["action"]
            for e in entries
            if e["who"] == "autoscaler" and e["target"] == f"/v1/models/{name}"
        ]

    def manager_metrics(self) -> str:
        return httpx.get(f"{self.manager_url}/metrics", timeout=10).raise_for_status().text


@pytest.fixture
def start_stack(
    zookeeper, zk_root: str, registry: Registry, tritons, procs, tmp_path: Path
) -> Callable[..., Stack]:
    def start(workers: int, *agent_flags: str) -> Stack:
        manager = manager_process(tmp_path, zookeeper.hosts, zk_root, AUTOSCALING)
        procs.append(manager.start())
        manager.wait_ready(timeout=60)
        url = f"http://127.0.0.1:{manager.port('http')}"
        ids = WORKERS[:workers]
        for worker_id, triton in zip(ids, tritons, strict=False):
            agent = agent_process(
                tmp_path, zookeeper.hosts, zk_root, worker_id, triton, url, *agent_flags
            )
            procs.append(agent.start())
        wait_for(
            lambda: set(registry.children(layout.WORKERS)) == set(ids),
            timeout=90,
            what="the workers registered",
        )
        gateway = GatewayProcess(tmp_path, "--zk", zookeeper.hosts, "--root", zk_root)
        procs.append(gateway)
        address = gateway.serve().address
        return Stack(registry, url, address, tmp_path / "audit.jsonl", tmp_path)

    return start


def answer(address: str, model: str) -> list[float] | None:
    """:func:`infer`, or None while the gateway answers with an error."""
    try:
        return infer(address, model)
    except triton_grpc.InferenceServerException:
        return None


@pytest.mark.parametrize("tritons", [3], indirect=True)
def test_replicas_follow_the_load_up_to_three_and_back_to_one(start_stack, tritons) -> None:
    stack = start_stack(3)
    auto = Autoscale(min_replicas=1, max_replicas=3, target_in_flight=1.0)
    stack.deploy("slow", auto, replicas=1, delay_s=0.05)
    wait_for(lambda: len(stack.routes("slow")) == 1, timeout=90, what="one ready replica")
    # NOTE: the gateway's routing table follows the route a moment after it is written
    assert wait_for(lambda: answer(stack.gateway, "slow"), what="a first answer") == [2.0, 3.0]

    with Load(stack.gateway, "slow", concurrency=3) as load:
        wait_for(lambda: len(stack.routes("slow")) == 3, timeout=120, what="three replicas")
    assert load.failures == [] and load.answered > 0
    scaled_up = stack.decisions("slow")
    assert any(a.startswith("autoscale up 1 -> ") for a in scaled_up), scaled_up
    assert any(a.startswith("autoscale up") and "-> 3: in flight" in a for a in scaled_up)

    def back_to_one() -> Scale | None:
        scale = stack.scale("slow")
        one = scale is not None and scale.replicas == 1 and len(stack.routes("slow")) == 1
        return scale if one else None

    scale = wait_for(back_to_one, timeout=120, what="back to one replica")
    assert scale.reason.startswith("in flight at most"), scale.reason
    assert stack.decisions("slow")[-1].startswith("autoscale down"), stack.decisions("slow")
    assert infer(stack.gateway, "slow") == [2.0, 3.0]
    metrics = stack.manager_metrics()
    assert 'modelgate_manager_autoscale_decisions_total{direction="up"}' in metrics
    assert 'modelgate_manager_autoscale_replicas{model="slow"} 1.0' in metrics


@pytest.mark.parametrize("tritons", [3], indirect=True)
def test_a_model_at_zero_answers_its_first_call_and_goes_back_to_zero_when_idle(
    start_stack, tritons
) -> None:
    stack = start_stack(1)
    auto = Autoscale(min_replicas=0, max_replicas=1, idle_seconds=3)
    stack.deploy("cold", auto, replicas=0)
    start = wait_for(lambda: stack.scale("cold"), timeout=60, what="the autoscaler's first choice")
    assert start.replicas == 0 and stack.routes("cold") == set()

    for _ in range(2):  # at zero from the start, then again after going idle
        assert infer(stack.gateway, "cold", timeout=90) == [2.0, 3.0]
        assert stack.decisions("cold")[-1].startswith("autoscale wake 0 -> 1: woken by gateway")

        def idle() -> Scale | None:
            scale = stack.scale("cold")
            at_zero = scale is not None and scale.replicas == 0 and not stack.routes("cold")
            return scale if at_zero else None

        scale = wait_for(idle, timeout=60, what="back to zero when idle")
        assert scale.reason.startswith("no call for"), scale.reason

    def cold_starts() -> list[float]:
        load = httpx.get(
            f"{stack.manager_url}/v1/models/cold/load", headers=auth("viewer"), timeout=10
        ).raise_for_status()
        return [s["cold_start_s"] for s in load.json()["samples"] if s["cold_start_s"]]

    assert all(s > 0 for s in wait_for(cold_starts, what="the cold-start time in the load"))
    status = (
        httpx.get(f"{stack.manager_url}/v1/models/cold/status", headers=auth("viewer"), timeout=10)
        .raise_for_status()
        .json()
    )
    assert status["cold_start_s"] > 0 and status["last_call"] is not None


@pytest.mark.parametrize("tritons", [3], indirect=True)
def test_more_models_than_fit_in_memory_all_answer_called_in_turns(start_stack, tritons) -> None:
    stack = start_stack(2, "--capacity-memory-mb", "100")
    names = [f"dense{i}" for i in range(5)]
    for name in names:
        auto = Autoscale(min_replicas=0, max_replicas=1, idle_seconds=600)
        stack.deploy(name, auto, replicas=0, memory_mb=40)

    for _ in range(2):
        for name in names:
            assert infer(stack.gateway, name, timeout=120) == [2.0, 3.0], name

    evictions = [a for n in names for a in stack.decisions(n) if a.startswith("autoscale evict")]
    assert evictions and all("to make room for dense" in a for a in evictions), evictions
    for worker_id in WORKERS[:2]:
        assert len(stack.registry.children(layout.assignments(worker_id))) <= 2
