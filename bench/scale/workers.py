"""``python -m bench.scale.workers``: several simulated workers in one process.

Each worker is a :class:`~bench.scale.backend.SimulatedAgent` with its own ZooKeeper session,
status server and model root, and a listening TCP socket as its "model server" address (HAProxy's
layer-4 health checks find it up; nothing answers gRPC on it). The ready file lists the worker
ids once every agent is registered. SIGTERM stops them as a crash would (no drain): their
sessions close, so their worker nodes and routes vanish at once; SIGKILL leaves them to expire.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from pathlib import Path

from bench.scale.backend import SimulatedAgent
from registry import entrypoint, logs, readyfile
from worker_agent.settings import WorkerSettings

log = logging.getLogger("bench.scale.workers")


async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A "model server" that accepts connections (health checks pass) and closes them."""
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def run(args: argparse.Namespace) -> None:
    stop = entrypoint.stop_event()
    listeners = [await asyncio.start_server(hang_up, "127.0.0.1", 0) for _ in args.worker_id]
    agents = []
    for worker_id, listener in zip(args.worker_id, listeners, strict=True):
        port = listener.sockets[0].getsockname()[1]
        settings = WorkerSettings(
            zk=args.zk,
            root=args.root,
            worker_id=worker_id,
            backend_address=f"127.0.0.1:{port}",
            advertise_host="127.0.0.1",
            model_root=args.workdir / worker_id / "models",
            status_host="127.0.0.1",
            status_port=0,
            drain_s=0,
            zk_session_timeout_s=args.session_timeout_s,
        )
        agents.append(SimulatedAgent(settings))
    try:
        await asyncio.gather(*(agent.start() for agent in agents))
        readyfile.write(args.ready_file, {}, workers=list(args.worker_id))
        log.info("%d simulated workers registered", len(agents))
        await stop.wait()
    finally:
        await asyncio.gather(*(agent.abandon() for agent in agents), return_exceptions=True)
        for listener in listeners:
            listener.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale.workers", description=__doc__)
    parser.add_argument("--zk", required=True, help="ZooKeeper connection string")
    parser.add_argument("--root", required=True, help="ZooKeeper root of the fleet")
    parser.add_argument("--workdir", type=Path, required=True, help="model roots go here")
    parser.add_argument("--worker-id", action="append", required=True, help="one per worker")
    parser.add_argument("--session-timeout-s", type=float, default=10.0)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logs.configure(args.log_level, False)
    return entrypoint.run(run(args), log)


if __name__ == "__main__":
    raise SystemExit(main())
