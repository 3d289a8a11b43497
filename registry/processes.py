"""Processes a role starts and owns: a model server in a process group of its own that dies
with its owner and leaves nothing behind, and the psutil helpers around it (the ports a
process listens on, process groups, processes marked in their environment).

Used by the worker agent (the model server it launches) and by the local dev tooling
(``deploy/local``), so both stop processes the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

log = logging.getLogger("registry.processes")

SERVER_MARKER = "MODELGATE_SERVER_OF"
"""Environment variable every process of a :class:`ServerProcess` carries (the server and
what it starts, e.g. Triton's Python-backend stubs): its value names the owner."""

#: After the leader of a group is gone, what is left of the group gets this long after its
#: SIGTERM before the SIGKILL.
_REST_GRACE = 3.0


def listening_ports(pid: int) -> list[int]:
    """TCP ports (IPv4 and IPv6) on which process ``pid`` has a listening socket."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:  # gone, or another user's
        return []
    return sorted({c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN})


def terminate(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 10.0) -> None:
    """SIGTERM ``proc``, wait up to ``grace`` seconds, then SIGKILL; always reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, waiting to be reaped by its parent, has ended)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_while(condition: Callable[[], bool], seconds: float) -> None:
    """Poll ``condition`` until it is false or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and condition():
        time.sleep(0.1)


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return members


def marked_pids(variable: str, value: str) -> list[int]:
    """Live processes (other than this one and its parents) whose environment has
    ``variable=value``: everything a marked process started, wherever it was reparented."""
    skip = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in skip:
            continue
        try:
            if proc.environ().get(variable) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except psutil.Error:  # gone, or another user's
            continue
    return sorted(found)


def kill(pids: Sequence[int], grace: float = 5.0) -> None:
    """SIGTERM each of ``pids`` (not necessarily our children), SIGKILL those left after
    ``grace`` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    wait_while(lambda: any(alive(p) for p in pids), grace)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def stop_groups(groups: Sequence[tuple[int, subprocess.Popen[bytes] | None]], grace: float) -> None:
    """Stop process groups, given as (leader pid, its Popen if it is our child).

    SIGTERM to each leader (a server stops its own children), up to ``grace`` seconds for
    the leaders to exit, then SIGTERM to what is left of each group and SIGKILL to anything
    still there 3 s later; returns once the groups are gone (or 3 s after the SIGKILL).
    """

    def leader_alive(pid: int, popen: subprocess.Popen[bytes] | None) -> bool:
        return popen.poll() is None if popen is not None else alive(pid)

    for pgid, _ in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pgid, signal.SIGTERM)
    wait_while(lambda: any(leader_alive(*g) for g in groups), grace)
    _signal_groups([g for g, _ in groups], signal.SIGTERM)
    wait_while(lambda: any(group_members(g) for g, _ in groups), _REST_GRACE)
    left = [g for g, _ in groups if group_members(g)]
    for pgid in left:
        log.warning("process group %d did not stop within %gs: SIGKILL", pgid, grace)
    _signal_groups(left, signal.SIGKILL)
    # SIGKILL is delivered asynchronously
    wait_while(lambda: any(group_members(g) for g in left), _REST_GRACE)
    for _, popen in groups:
        if popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=5)


def _signal_groups(pgids: Sequence[int], sig: signal.Signals) -> None:
    for pgid in pgids:
        if group_members(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)


class ServerProcess:
    """A server command its owner supervises, that never outlives it nor leaks children.

    - It runs in a process group of its own, so stopping it stops what it started.
    - It gets SIGKILL when its owner dies, even by SIGKILL (Linux parent-death signal, set by
      util-linux's ``setpriv`` before the exec; without ``setpriv`` this one guarantee is
      lost and a warning says so).
    - Every process of it carries ``MODELGATE_SERVER_OF=<owner>``: whatever an earlier
      owner of the same name left behind (a server whose owner was SIGKILLed without the
      parent-death signal, children of a server that was SIGKILLed — Triton cannot stop
      its Python-backend stubs then) is stopped before the next start, and after a stop.

    NOTE: the parent-death signal fires when the *thread* that started the server ends.
    Start it from a thread that lives as long as the owner (the event loop's, or a pool
    thread: asyncio's default executor keeps its threads until the loop closes).
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        owner: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.cmd = list(cmd)
        self.owner = owner
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.env[SERVER_MARKER] = owner
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Stop what an earlier server of this owner left, then start the command."""
        if self.running:
            raise RuntimeError(f"{self.cmd[0]} of {self.owner} is running already")
        self.stop_leftovers()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [*die_with_parent(), *self.cmd],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the server, then its group; SIGKILL what is left; reap everything."""
        if self.proc is not None:
            stop_groups([(self.proc.pid, self.proc)], grace)
        self.stop_leftovers()

    def kill(self) -> None:
        """SIGKILL the server alone, as the kernel's OOM killer does (for failure tests);
        its children are left to :meth:`start` or :meth:`stop` to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop_leftovers(self) -> None:
        """Stop every live process marked with this owner (none while the server runs
        normally and nothing leaked)."""
        current = set(group_members(self.proc.pid)) if self.running and self.proc else set()
        left = [pid for pid in marked_pids(SERVER_MARKER, self.owner) if pid not in current]
        if left:
            log.warning(
                "stopping %d leftover process(es) of an earlier server of %s: %s",
                len(left),
                self.owner,
                left,
            )
            kill(left)


def die_with_parent(signal: str = "KILL") -> list[str]:
    """The argv prefix that makes a child get ``signal`` when its parent dies, even by
    SIGKILL (util-linux ``setpriv --pdeathsig``); empty, with a warning, without setpriv."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning(
            "setpriv (util-linux) not found: a launched server will not die with its owner "
            "if the owner is killed; install util-linux"
        )
        return []
    return [setpriv, "--pdeathsig", signal, "--"]
