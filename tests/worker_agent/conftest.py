"""Fixtures of the worker-agent tests: a Triton of their own whose repository is the
agent's model root, and a factory of in-process agents stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.local.zookeeper import LocalZooKeeper
from tests.worker_agent.helpers import AgentThread, settings_for
from worker_agent.tritonserver import TritonServer


@pytest.fixture(scope="module")
def agent_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A tritonserver (explicit model control) on ``<tmp>/models``, the agents' model root."""
    workdir = tmp_path_factory.mktemp("agent-triton")
    server = TritonServer(workdir / "models", workdir)
    server.start()
    yield server
    server.stop()


AgentFactory = Callable[..., AgentThread]


@pytest.fixture
def start_agent(
    zookeeper: LocalZooKeeper, zk_root: str, request: pytest.FixtureRequest
) -> Iterator[AgentFactory]:
    """Start an agent in this test's chroot, on the module's Triton unless told otherwise."""
    agents: list[AgentThread] = []

    def start(**overrides: Any) -> AgentThread:
        if "model_root" not in overrides or "backend_address" not in overrides:
            triton: TritonServer = request.getfixturevalue("agent_triton")
            overrides.setdefault("model_root", triton.model_repository)
            overrides.setdefault("backend_address", triton.address)
        model_root = overrides.pop("model_root")
        address = overrides.pop("backend_address")
        settings = settings_for(zookeeper.hosts, zk_root, Path(model_root), address, **overrides)
        thread = AgentThread(settings)
        agents.append(thread)
        return thread.start()

    yield start
    for thread in agents:
        if not thread.stopped:
            thread.drain()


def launched_triton(start_agent: AgentFactory, tmp_path: Path, **overrides: object) -> AgentThread:
    """An agent that launches (and supervises) a Triton of its own in ``tmp_path``."""
    return start_agent(
        model_root=tmp_path / "models",
        backend_address=None,
        launch_triton=True,
        launch_host="127.0.0.1",
        triton_grpc_port=0,
        work_dir=tmp_path / "work",
        restart_backoff_min_s=0.2,
        **overrides,
    )
