"""``python -m worker_agent``: run one worker agent until SIGTERM/SIGINT, then drain."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from registry import entrypoint, readyfile
from worker_agent.agent import WorkerAgent
from worker_agent.settings import WorkerSettings

log = logging.getLogger("worker_agent")

DESCRIPTION = (
    "modelgate worker agent: pulls models, loads them into Triton or TF-Serving, registers "
    "the worker and its routes in ZooKeeper."
)


async def run(settings: WorkerSettings) -> None:
    agent = WorkerAgent(settings)
    stop = entrypoint.stop_event()
    try:
        await agent.start()
    except BaseException:
        await agent.abandon()
        if agent.supervisor is not None:
            await agent.supervisor.stop()
        raise
    log.info(
        "worker %s running (status port %s)", agent.worker_id, agent.status and agent.status.port
    )
    if settings.ready_file is not None:
        assert agent.status is not None and agent.status.port is not None  # started
        ports = {"status": agent.status.port}
        readyfile.write(settings.ready_file, ports, worker_id=agent.worker_id)
    await stop.wait()
    log.info("signal received")
    await agent.drain()


def main(argv: Sequence[str] | None = None) -> int:
    settings = entrypoint.settings_or_exit(
        WorkerSettings, argv, prog="python -m worker_agent", description=DESCRIPTION
    )
    return entrypoint.run(run(settings), log)


if __name__ == "__main__":
    sys.exit(main())
