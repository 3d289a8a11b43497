"""``python -m bench.heartbeat``: ZooKeeper writes of one worker's record, per second.

A real ZooKeeper and the real worker agent (on the instant backend of the scale benchmark,
``bench/scale/backend.py``) holding ``--models`` ready models, heartbeating every
``--interval-s``. Over ``--seconds`` it counts the writes of ``/workers/<id>`` (the node's
version) and their bytes, twice: as the agent writes now (only what readers use changed, and
the heartbeat time every ``heartbeat_refresh_s``, 60 s), and with a refresh at every
heartbeat, which is what the agent did before (the whole record every heartbeat). Prints
both and their ratio; no model server runs, so measured usage (which a launched server adds,
written past a 10% step) stays out of both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from bench.scale.backend import SimulatedAgent
from deploy.local.zookeeper import LocalZooKeeper
from registry import Registry, layout
from registry.records import Assignment, Worker
from worker_agent.settings import WorkerSettings


async def measure(
    zk: str, root: str, workdir: Path, models: int, interval_s: float, refresh_s: float,
    seconds: float,
) -> tuple[float, float]:  # fmt: skip
    """(writes per second, bytes per second) of the worker record over ``seconds``."""
    registry = Registry(zk, root).start()
    worker_id = f"w-{refresh_s:g}"
    for n in range(models):
        registry.put(
            layout.assignment(worker_id, f"m{n:04d}", 1),
            Assignment(model=f"m{n:04d}", version=1, backend="triton", artifact_uri="file:///x"),
        )
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    agent = SimulatedAgent(
        WorkerSettings(
            zk=zk, root=root, worker_id=worker_id, backend_address=f"127.0.0.1:{port}",
            advertise_host="127.0.0.1", model_root=workdir / worker_id, status_host="127.0.0.1",
            status_port=0, drain_s=0, heartbeat_interval_s=interval_s,
            heartbeat_refresh_s=refresh_s,
        )
    )  # fmt: skip
    await agent.start()
    path = layout.worker(worker_id)

    def wait_ready() -> None:
        while True:
            record = registry.read(path, Worker)
            if record and sum(h.state == "READY" for h in record.models.values()) == models:
                return
            time.sleep(0.2)

    await asyncio.to_thread(wait_ready)
    await asyncio.sleep(interval_s * 2)  # settled
    _, start = registry.get(path, Worker)
    size = len(registry.kazoo.get(path)[0])
    began = time.monotonic()
    await asyncio.sleep(seconds)
    _, end = registry.get(path, Worker)
    elapsed = time.monotonic() - began
    await agent.abandon()
    listener.close()
    registry.stop()
    writes = (end - start) / elapsed
    return writes, writes * size


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="mg-heartbeat-") as tmp:
        zookeeper = LocalZooKeeper(Path(tmp) / "zk")
        zookeeper.start()
        try:
            rows = {}
            for label, refresh in (("before (every heartbeat)", 1e-6), ("now", 60.0)):
                rows[label] = await measure(
                    zookeeper.hosts, f"/hb{int(refresh)}", Path(tmp), args.models,
                    args.interval_s, refresh, args.seconds,
                )  # fmt: skip
                print(f"{label}: {rows[label][0]:.3f} writes/s, {rows[label][1]:,.0f} bytes/s",
                      flush=True)  # fmt: skip
        finally:
            with contextlib.suppress(Exception):
                zookeeper.stop()
    (before, _), (now, _) = rows.values()
    ratio = f"{before / now:.1f}x fewer writes" if now else "no write at all now"
    print(f"{args.models} models, heartbeat every {args.interval_s:g} s, {args.seconds:g} s "
          f"each: {ratio}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.heartbeat", description=__doc__)
    parser.add_argument("--models", type=int, default=300)
    parser.add_argument("--interval-s", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
