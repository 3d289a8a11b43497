"""Manager fixtures: an app on a per-test ZooKeeper chroot, tokens per role, simulated workers.

Simulated workers are real ``Worker`` ephemeral nodes, each from its own ZooKeeper session
(closing the session = the worker died), so placement and reconcile run against the real
ZooKeeper behaviour.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deploy.local.zookeeper import LocalZooKeeper
from manager_api.app import create_app
from manager_api.auth import TokenEntry, TokenStore
from manager_api.settings import ManagerSettings
from registry import Registry, layout
from registry.records import Group, Worker
from tests.servers.zk import wait_for

TOKENS = {
    "admin": "admin-token-123",
    "operator": "ops-ads-token-123",
    "viewer": "viewer-token-123",
    "internal": "internal-token-123",
}


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def token_store() -> TokenStore:
    return TokenStore(
        [
            TokenEntry(name="root", role="admin", token=TOKENS["admin"]),
            TokenEntry(name="ads-ops", role="operator", token=TOKENS["operator"], groups=["ads"]),
            TokenEntry(name="watcher", role="viewer", token=TOKENS["viewer"]),
            TokenEntry(name="fleet", role="internal", token=TOKENS["internal"]),
        ]
    )


TOKENS_TOML = "\n".join(
    f'[[tokens]]\nname = "{role}-user"\nrole = "{role}"\ntoken = "{tok}"\n'
    + ('groups = ["ads"]\n' if role == "operator" else "")
    for role, tok in TOKENS.items()
)


def settings_for(
    zookeeper: LocalZooKeeper, zk_root: str, tmp: Path, **kw: object
) -> ManagerSettings:
    tokens = tmp / "tokens.toml"
    tokens.write_text(TOKENS_TOML)
    values: dict[str, object] = {
        "zk": zookeeper.hosts,
        "root": zk_root,
        "port": 0,
        "host": "127.0.0.1",
        "blob_dir": tmp / "blobs",
        "tokens_file": tokens,
        "audit_log": tmp / "audit.jsonl",
        "reconcile_interval_s": 0.5,
    }
    values.update(kw)
    return ManagerSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(zookeeper: LocalZooKeeper, zk_root: str, tmp_path: Path) -> ManagerSettings:
    return settings_for(zookeeper, zk_root, tmp_path)


@pytest.fixture
def app(settings: ManagerSettings, registry: Registry) -> FastAPI:
    """The manager app without a reconcile loop (API tests are about the API)."""
    return create_app(settings, registry, tokens=token_store(), start_reconciler=False)


@pytest.fixture
def client(app: FastAPI, registry: Registry) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        registry.put(layout.group("ads"), Group(name="ads"))
        registry.put(layout.group("search"), Group(name="search"))
        yield c


@dataclass
class SimWorker:
    """A worker registration in its own ZooKeeper session."""

    registry: Registry
    record: Worker

    def kill(self) -> None:
        self.registry.stop()


@pytest.fixture
def sim_workers(zookeeper: LocalZooKeeper, zk_root: str) -> Iterator[Callable[..., SimWorker]]:
    started: list[Registry] = []

    def make(worker_id: str, backend: str = "triton", **fields: object) -> SimWorker:
        reg = Registry(zookeeper.hosts, zk_root, connect_timeout=10).start()
        started.append(reg)
        record = Worker(
            worker_id=worker_id,
            host="127.0.0.1",
            backend=backend,  # type: ignore[arg-type]
            address=f"127.0.0.1:{10000 + len(started)}",
            **fields,  # type: ignore[arg-type]
        )
        reg.register_ephemeral(layout.worker(worker_id), record)
        return SimWorker(reg, record)

    yield make
    for reg in started:
        if reg.connected:
            reg.stop()


class LiveManager:
    """uvicorn serving an app in a thread on a free port."""

    def __init__(self, app: FastAPI) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveManager:
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=30, what="uvicorn to start")
        return self

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def dataplane() -> str:
    """Gateways the manager tests start (tests.gateway.conftest.gateway_settings) run the
    data plane users get by default; tests/gateway runs both."""
    return "haproxy"
