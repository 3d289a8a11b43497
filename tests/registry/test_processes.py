"""ServerProcess: a launched server dies with its owner, takes its children along, and a
new start stops whatever an earlier owner left behind (real processes, real signals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from registry.processes import SERVER_MARKER, ServerProcess, alive, marked_pids
from tests.servers.zk import wait_for

# A "server" that starts a child (as Triton starts its Python-backend stubs) and sleeps.
SERVER_WITH_CHILD = [
    sys.executable,
    "-c",
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
    "time.sleep(300)",
]


def _children_marked(owner: str, exclude: int | None) -> list[int]:
    return [p for p in marked_pids(SERVER_MARKER, owner) if p != exclude]


def test_stop_takes_the_servers_children_along(tmp_path: Path) -> None:
    owner = str(tmp_path)
    server = ServerProcess(SERVER_WITH_CHILD, owner=owner, log_path=tmp_path / "s.log")
    server.start()
    child = wait_for(lambda: _children_marked(owner, server.pid), what="the server's child")
    server.stop(grace=5)
    assert not server.running
    assert not any(alive(p) for p in child)
    assert marked_pids(SERVER_MARKER, owner) == []


def test_children_of_a_sigkilled_server_are_stopped_before_the_restart(tmp_path: Path) -> None:
    owner = str(tmp_path)
    server = ServerProcess(SERVER_WITH_CHILD, owner=owner, log_path=tmp_path / "s.log")
    server.start()
    orphans = wait_for(lambda: _children_marked(owner, server.pid), what="the server's child")
    server.kill()  # as the OOM killer does: the leader alone
    assert all(alive(p) for p in orphans)  # left running with parent 1 ...
    server.start()
    try:
        assert not any(alive(p) for p in orphans)  # ... until the next start
        assert server.running
    finally:
        server.stop(grace=5)
    assert marked_pids(SERVER_MARKER, owner) == []


def test_a_leftover_of_an_earlier_owner_is_stopped_before_a_new_server_starts(
    tmp_path: Path,
) -> None:
    owner = str(tmp_path)
    # a server a SIGKILLed owner left behind (started outside this owner, same marker)
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"],
        env={**os.environ, SERVER_MARKER: owner},
        start_new_session=True,
    )
    try:
        server = ServerProcess(
            [sys.executable, "-c", "import time; time.sleep(300)"],
            owner=owner,
            log_path=tmp_path / "s.log",
        )
        server.start()
        assert leftover.wait(timeout=10) is not None
        assert server.running
        server.stop(grace=5)
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_the_server_dies_with_its_owner_even_by_sigkill(tmp_path: Path) -> None:
    owner_script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from registry.processes import ServerProcess
        server = ServerProcess(
            [sys.executable, "-c", "import time; time.sleep(300)"],
            owner={str(tmp_path)!r}, log_path=Path({str(tmp_path / "s.log")!r}),
        )
        server.start()
        Path({str(tmp_path / "pid")!r}).write_text(str(server.pid))
        time.sleep(300)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_script])
    try:
        pid_file = tmp_path / "pid"
        wait_for(pid_file.exists, what="the owner to start its server")
        server_pid = int(pid_file.read_text())
        assert alive(server_pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        wait_for(lambda: not alive(server_pid), what="the server to die with its owner")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
