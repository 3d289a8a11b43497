"""A console stack: the manager (uvicorn, reconcile loop, load tracker every 0.2 s) on a real
ZooKeeper, two registered workers, a real gateway process (Python data plane) in front of
the real Triton serving ``add_one_gw`` (group ``ads``), and ``dbl_idle`` (group ``search``)
with no route."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from manager_api.app import create_app
from registry import Registry, layout
from registry.records import Group
from tests.gateway.conftest import ADD_ONE, load_add_one, put_route
from tests.manager_api.conftest import LiveManager, auth, settings_for, token_store
from tests.servers.gateway import GatewayProcess
from worker_agent.tritonserver import TritonServer

IDLE = "dbl_idle"


@dataclass
class Console:
    url: str
    registry: Registry
    gateway: GatewayProcess
    audit_log: Path
    admin: httpx.Client

    def call(self, version: str = "1") -> bool:
        """One ModelInfer of ``add_one_gw`` through the gateway; True if it answered OK."""
        client = triton_grpc.InferenceServerClient(self.gateway.address)
        try:
            inp = triton_grpc.InferInput("INPUT0", [2], "FP32")
            inp.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
            client.infer(ADD_ONE, [inp], model_version=version, client_timeout=10)
            return True
        except triton_grpc.InferenceServerException:
            return False
        finally:
            client.close()


@pytest.fixture
def console(
    request: pytest.FixtureRequest,
    zookeeper,
    zk_root: str,
    registry: Registry,
    triton: TritonServer,
    sim_workers,
    tmp_path: Path,
) -> Iterator[Console]:
    load_add_one(triton)
    for group in ("ads", "search"):
        registry.put(layout.group(group), Group(name=group))
    sim_workers("worker-a", labels={"zone": "a"}, capacity_memory_mb=4096)
    sim_workers("worker-b", labels={"zone": "b"})
    settings = settings_for(zookeeper, zk_root, tmp_path, load_interval_s=0.2)
    app = create_app(settings, registry, tokens=token_store(), start_reconciler=True)
    gateway = GatewayProcess(
        tmp_path, "--zk", zookeeper.hosts, "--root", zk_root, "--dataplane", "python"
    ).serve()
    try:
        with (
            LiveManager(app) as live,
            httpx.Client(base_url=live.url, headers=auth("admin"), timeout=30) as admin,
        ):
            for name, backend, group in ((ADD_ONE, "triton", "ads"), (IDLE, "tfserving", "search")):
                admin.post(
                    "/v1/models", json={"name": name, "backend": backend, "group": group}
                ).raise_for_status()
            for v, label in ((1, "stable"), (2, "canary")):
                admin.post(
                    f"/v1/models/{ADD_ONE}/versions",
                    json={
                        "version": v,
                        "artifact_uri": f"file:///models/{ADD_ONE}/{v}",
                        "labels": [label],
                    },
                ).raise_for_status()
                put_route(registry, ADD_ONE, v, "worker-a", triton.address)
            admin.post(
                f"/v1/models/{IDLE}/versions", json={"artifact_uri": f"file:///models/{IDLE}/1"}
            ).raise_for_status()
            yield Console(live.url, registry, gateway, settings.audit_log, admin)  # type: ignore[arg-type]
    finally:
        gateway.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"\n----- gateway ({gateway.log}) -----\n{gateway.log_tail()}")
