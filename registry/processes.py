"""Local processes: the TCP ports one listens on (to read back a port-0 bind), and stopping
one politely."""

from __future__ import annotations

import subprocess

import psutil


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
