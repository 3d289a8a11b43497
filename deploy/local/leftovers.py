"""The local stack's hold on its run dir: the lock, the pids file, and killing leftovers.

A lock (``<run-dir>/stack.lock``) is held while a stack runs; it dies with its process, so
it never goes stale. Every process group started is appended to ``<run-dir>/pids``, and
every process of the stack carries ``MODELGATE_LOCAL_STACK=<run-dir>`` in its environment
(the roles, and what they start: Triton and its stubs), so what a crashed run left is
found and killed by the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import TextIO

import psutil

from registry.processes import alive, kill, stop_groups

log = logging.getLogger("deploy.local")

MARKER = "modelgate_stack"
"""``python -X modelgate_stack=<run-dir>``: the run dir, visible in ``ps``."""
ENV_MARKER = "MODELGATE_LOCAL_STACK"
"""``MODELGATE_LOCAL_STACK=<run-dir>``: inherited by everything the roles start."""
_ZOOKEEPER_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


class RunDirLock:
    """An exclusive lock on a run dir, holding the owner's pid."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "stack.lock"
        self._file: TextIO | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> str | None:
        """Take the lock; None if taken, else the pid of the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "?"
            lock.close()
            return owner
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._file = lock
        return None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def record(run_dir: Path, name: str, pid: int) -> None:
    """Append a started process group to ``<run-dir>/pids`` (synced: it must survive a crash)."""
    with (run_dir / "pids").open("a") as f:
        f.write(json.dumps({"name": name, "pid": pid}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def kill_leftovers(run_dir: Path) -> None:
    """Kill what a crashed previous run left: recorded groups, then marked processes."""
    pids_file = run_dir / "pids"
    groups: list[tuple[str, int]] = []
    if pids_file.exists():
        for line in pids_file.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                entry = json.loads(line)
                # Only if that pid is still one of ours (pids get reused).
                if is_ours(int(entry["pid"]), run_dir):
                    groups.append((entry["name"], int(entry["pid"])))
    if groups:
        log.warning("killing %d leftover process group(s) of a previous run", len(groups))
    # The roles first (they deregister through ZooKeeper), ZooKeeper last.
    stop_groups([(pid, None) for name, pid in groups if name != "zookeeper"], 5.0)
    stop_groups([(pid, None) for name, pid in groups if name == "zookeeper"], 5.0)
    pids = stack_pids(run_dir)
    if pids:
        log.warning("killing leftover processes of a previous run: %s", pids)
        kill(pids)


def is_ours(pid: int, run_dir: Path) -> bool:
    """True if ``pid`` belongs to the stack of ``run_dir``.

    Its processes carry ``MODELGATE_LOCAL_STACK=<run-dir>`` in their environment, or are its
    ZooKeeper. A process that merely names a file in the run dir (``tail -f .run/logs/...``)
    is not ours.
    """
    try:
        proc = psutil.Process(pid)
        if proc.environ().get(ENV_MARKER) == str(run_dir):
            return True
        args = proc.cmdline()
    except psutil.Error:  # gone, or another user's
        return False
    return _ZOOKEEPER_MAIN in args and str(run_dir / "zookeeper" / "zoo.cfg") in args


def stack_pids(run_dir: Path | str) -> list[int]:
    """Pids of the live processes of the stack using ``run_dir`` (other than this one)."""
    run_dir = Path(run_dir).resolve()
    # e.g. `timeout 60 python stack.py --run-dir X` carries the marker too
    skip = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    return sorted(
        pid for pid in psutil.pids() if pid not in skip and is_ours(pid, run_dir) and alive(pid)
    )
