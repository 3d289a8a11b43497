"""The roles as subprocesses for full-stack tests: ``python -m manager_api`` and
``python -m worker_agent`` in front of a real Triton, on free ports, their logs in the test's
directory (the gateway is :class:`tests.servers.gateway.GatewayProcess`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from deploy.local.runner import Process
from tests.manager_api.conftest import TOKENS, TOKENS_TOML
from worker_agent.tritonserver import TritonServer


def manager_process(
    tmp: Path, zk_hosts: str, zk_root: str, settings: Mapping[str, str] | None = None
) -> Process:
    """A manager (REST API, reconcile loop) with the test tokens; ``settings``: more
    ``MODELGATE_MANAGER_*`` environment variables. Not started."""
    tokens = tmp / "tokens.toml"
    tokens.write_text(TOKENS_TOML)
    cmd = [sys.executable, "-m", "manager_api", "--zk", zk_hosts, "--root", zk_root,
           "--host", "127.0.0.1", "--port", "0", "--blob-dir", str(tmp / "blobs"),
           "--tokens-file", str(tokens), "--audit-log", str(tmp / "audit.jsonl")]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(settings or {})}
    return Process("manager", cmd, log=tmp / "manager.log", env=env)


def agent_process(
    tmp: Path,
    zk_hosts: str,
    zk_root: str,
    worker_id: str,
    triton: TritonServer,
    manager_url: str,
    *flags: str,
) -> Process:
    """A worker agent fronting ``triton`` (heartbeat every 0.5 s, short drain, 4 s session);
    ``flags``: more agent flags. Not started."""
    cmd = [sys.executable, "-m", "worker_agent", "--zk", zk_hosts, "--root", zk_root,
           "--worker-id", worker_id, "--backend", "triton",
           "--backend-address", triton.address, "--model-root", str(triton.model_repository),
           "--advertise-host", "127.0.0.1", "--status-host", "127.0.0.1", "--status-port", "0",
           "--heartbeat-interval-s", "0.5", "--drain-s", "0.2", "--zk-session-timeout-s", "4",
           "--manager-url", manager_url, *flags]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MODELGATE_WORKER_BLOB_TOKEN": TOKENS["internal"]}
    return Process(worker_id, cmd, log=tmp / f"{worker_id}.log", env=env)
