"""Start, wait for and stop one modelgate process: the runner of the local stack, tests and bench.

A :class:`Process` runs a command in a process group of its own (so it is stopped with
everything it started), with its output appended to a log file, and passes it
``--ready-file PATH``: it is ready once it has written that file with its own pid (see
:mod:`registry.readyfile`), never by what it prints. Every wait is bounded and fails with
:class:`ProcessFailed` carrying the tail of the log::

    gateway = Process("gateway", [sys.executable, "-m", "gateway", "--port", "0"],
                      log=tmp / "gateway.log").start()
    port = gateway.wait_ready(timeout=60)["ports"]["grpc"]
    ...
    gateway.stop()
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from registry import readyfile
from registry.processes import stop_groups

REPO = Path(__file__).resolve().parents[2]

log = logging.getLogger("deploy.local")

T = TypeVar("T")


class ProcessFailed(RuntimeError):
    """A process exited, or was not ready in time (the message holds the tail of its log)."""


class Process:
    """One child process in a process group of its own, its output in ``log``."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO,
        ready_file: Path | None = None,
    ) -> None:
        """``env``: the child's whole environment (default: this process's), with
        ``PYTHONUNBUFFERED=1`` unless it says otherwise. ``ready_file``: default
        ``<log dir>/<name>.ready.json``."""
        self.name = name
        self.log = Path(log)
        self.ready_file = ready_file or self.log.with_name(f"{name}.ready.json")
        self.cmd = [*cmd, "--ready-file", str(self.ready_file)]
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")  # the log tail is up to date on failure
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}
        """The ready file's content, once :meth:`wait_ready` returned."""

    def start(self) -> Process:
        """Start the command (returns at once; :meth:`wait_ready` waits for it)."""
        if self.popen is not None:
            raise RuntimeError(f"{self.name} was started already")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)  # a previous run's file is not this one's
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,  # own process group: stopped as a whole
            )
        return self

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def port(self, name: str) -> int:
        """A port from the ready file (``grpc``, ``metrics``, ``http``, ``status``)."""
        return int(self.ready["ports"][name])

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Wait until the process has written its ready file; return its content."""
        self.ready = self.wait_for(self._read_ready, f"ready ({self.ready_file})", timeout)
        return self.ready

    def wait_for(self, check: Callable[[], T | None], what: str, timeout: float) -> T:
        """Poll ``check`` until it returns something truthy; fail if the process exits first
        or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            if self.returncode is not None:
                raise ProcessFailed(
                    f"{self.name} exited with code {self.returncode} before {what}; "
                    f"log {self.log}:\n{self.log_tail()}"
                )
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise ProcessFailed(
                    f"{self.name} not {what} within {timeout:g}s; log {self.log}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the process, then its group; SIGKILL what is left (see :func:`stop_all`)."""
        stop_all([self], grace)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            text = ""
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    @property
    def _popen(self) -> subprocess.Popen[bytes]:
        if self.popen is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.popen

    def _read_ready(self) -> dict[str, Any] | None:
        content = readyfile.read(self.ready_file)
        return content if content is not None and content["pid"] == self.pid else None


def stop_all(processes: Sequence[Process], grace: float) -> None:
    """Stop processes together (see :func:`stop_groups`); those never started are skipped."""
    stop_groups([(p.pid, p.popen) for p in processes if p.popen is not None], grace)
