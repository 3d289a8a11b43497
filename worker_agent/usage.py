"""What the model server really uses: CPU and memory of its process tree, and per model
where the backend tells one model's share.

Triton's Python backend runs one ``triton_python_backend_stub`` process per model instance;
its argv is ``stub <repository>/<model>/<version>/model.py <shm region> <shm size> <shm
growth> <triton pid> <backend dir> <ipc timeout> <instance name> <kind>``, so the two
directories above the model file name the ``model@version`` it serves.

Memory is the resident set size (RSS) summed over the tree: a page shared between the
tree's processes (libraries, the stubs' shared-memory regions) counts once per process, so
the sum is an upper bound of what the tree holds, and it does not change when other
processes on the host start or stop (the proportional set size would: it splits shared pages
with them too). CPU is the cores busy between two measurements (1.0 = one core): the user
and system time the tree's processes used in that interval, divided by its
length. A process that ended between two measurements takes its last interval's CPU with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import PurePath

import psutil

from registry import layout
from registry.errors import InvalidArgumentError
from registry.records import Usage

#: The executable name of Triton's Python-backend stub (one process per model instance).
PYTHON_BACKEND_STUB = "triton_python_backend_stub"

_MIB = 1024 * 1024


@dataclass(frozen=True)
class Measurement:
    """One measurement of the model server's process tree."""

    #: The server and every process it started.
    server: Usage
    #: Per ``model@version`` key, the processes that serve only that model.
    models: dict[str, Usage] = field(default_factory=dict)


def stub_model_key(cmdline: list[str]) -> str | None:
    """The ``model@version`` a Python-backend stub serves, from its argv; None for any
    other process."""
    if len(cmdline) < 2 or PurePath(cmdline[0]).name != PYTHON_BACKEND_STUB:
        return None
    parts = PurePath(cmdline[1]).parts
    if len(parts) < 3:
        return None
    try:
        model, version = layout.parse_assignment_key(f"{parts[-3]}@{parts[-2]}")
    except InvalidArgumentError:  # not a model modelgate could have assigned
        return None
    return layout.assignment_key(model, version)


class UsageMeter:
    """Measures the process tree under one root pid; each call reports the CPU used since
    the previous call (since the root started, for the first call on a root).

    Blocking (a few ms: it reads ``/proc`` of every process on the host to find the tree):
    call it off the event loop.
    """

    def __init__(self) -> None:
        self._root: tuple[int, float] | None = None
        self._at = 0.0
        #: CPU seconds of each process (pid, create time) at the previous measurement.
        self._cpu: dict[tuple[int, float], float] = {}

    def measure(self, pid: int) -> Measurement | None:
        """Measure the tree under ``pid``; None if that process is gone or not readable."""
        try:
            root = psutil.Process(pid)
            root_id = (pid, root.create_time())
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        now = time.time()
        if root_id != self._root:  # a new server: its processes count from their start
            self._root, self._at, self._cpu = root_id, root_id[1], {}
        interval = max(now - self._at, 1e-3)
        cpu_seen: dict[tuple[int, float], float] = {}
        total_cpu = total_memory = 0.0
        per_model: dict[str, list[float]] = {}
        for proc in tree:
            try:
                with proc.oneshot():
                    proc_id = (proc.pid, proc.create_time())
                    times = proc.cpu_times()
                    memory = proc.memory_info().rss / _MIB
                    key = stub_model_key(proc.cmdline())
            except psutil.Error:  # ended during the walk (or not ours to read)
                if proc is root:
                    return None
                continue
            cpu_seen[proc_id] = times.user + times.system
            busy = (cpu_seen[proc_id] - self._cpu.get(proc_id, 0.0)) / interval
            total_cpu += busy
            total_memory += memory
            if key is not None:
                share = per_model.setdefault(key, [0.0, 0.0])
                share[0] += busy
                share[1] += memory
        self._at, self._cpu = now, cpu_seen
        return Measurement(
            server=_usage(total_cpu, total_memory),
            models={key: _usage(cpu, memory) for key, (cpu, memory) in sorted(per_model.items())},
        )


def _usage(cpu: float, memory_mb: float) -> Usage:
    return Usage(cpu=round(max(cpu, 0.0), 3), memory_mb=round(memory_mb, 1))
