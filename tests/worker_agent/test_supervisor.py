"""Supervisor + CommandLauncher (``--launch CMD``): a dead process is restarted with backoff."""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from worker_agent.metrics import WorkerMetrics
from worker_agent.supervisor import CommandLauncher, Supervisor


async def test_a_launched_command_that_dies_is_restarted_and_reported(tmp_path: Path) -> None:
    command = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(120)'"
    launcher = CommandLauncher(command, "127.0.0.1:1", tmp_path / "work")
    metrics = WorkerMetrics(CollectorRegistry())
    restarted = asyncio.Event()

    async def on_restart() -> None:
        restarted.set()

    supervisor = Supervisor(
        launcher,
        metrics,
        backoff_min=0.1,
        backoff_max=1.0,
        on_restart=on_restart,
        poll_interval=0.05,
    )
    await supervisor.start()
    try:
        assert launcher.running and launcher.process.pid is not None
        first = launcher.process.pid
        launcher.process.kill()
        await asyncio.wait_for(restarted.wait(), 30)
        assert launcher.running and launcher.process.pid != first
        assert supervisor.restarts == 1
        assert metrics.registry.get_sample_value("modelgate_worker_backend_restarts_total") == 1
        assert (tmp_path / "work" / "model-server.log").exists()
    finally:
        await supervisor.stop()
    assert not launcher.running
