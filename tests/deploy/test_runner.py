"""The process runner: ready by its ready file only, failures carry the log, stop ends the group."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from deploy.local.runner import Process, ProcessFailed
from registry import readyfile
from registry.processes import alive, group_members

# Each script gets ``--ready-file PATH`` appended by the runner: sys.argv[2] is PATH.
SERVES = """
import sys, time
from registry import readyfile
print("starting", flush=True)
readyfile.write(sys.argv[2], {"http": 1234}, role="test")
time.sleep(600)
"""
FAILS = """
import sys
print("cannot bind: address in use", flush=True)
sys.exit(3)
"""
STALE = """
import json, sys, time
from pathlib import Path
Path(sys.argv[2]).write_text(json.dumps({"pid": 1, "ports": {}}))
time.sleep(600)
"""
# A child that ignores SIGTERM, in the same group as its parent.
STUBBORN_CHILD = """
import subprocess, sys, time
from registry import readyfile
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
readyfile.write(sys.argv[2], {}, child=child.pid)
time.sleep(600)
"""


def _python(tmp_path: Path, script: str) -> Process:
    return Process("role", [sys.executable, "-c", script], log=tmp_path / "role.log")


def test_ready_file_is_written_whole_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ready.json"
    assert readyfile.read(path) is None
    readyfile.write(path, {"grpc": 8500}, worker_id="w1")

    content = json.loads(path.read_text())
    assert list(content) == ["pid", "worker_id", "ports"]
    assert content["worker_id"] == "w1" and content["ports"] == {"grpc": 8500}
    assert readyfile.read(path) == content
    assert [p.name for p in path.parent.iterdir()] == ["ready.json"]  # no temporary left


def test_ready_once_the_process_wrote_its_ready_file(tmp_path: Path) -> None:
    process = _python(tmp_path, SERVES).start()
    try:
        ready = process.wait_ready(timeout=30)
        assert ready == {"pid": process.pid, "role": "test", "ports": {"http": 1234}}
        assert process.port("http") == 1234
        assert process.running
    finally:
        process.stop(grace=5)
    assert not process.running and not alive(process.pid)
    assert "starting" in process.log_tail()


def test_exit_before_ready_fails_with_the_code_and_the_log_tail(tmp_path: Path) -> None:
    process = _python(tmp_path, FAILS).start()
    with pytest.raises(ProcessFailed, match="role exited with code 3") as failed:
        process.wait_ready(timeout=30)
    assert "cannot bind: address in use" in str(failed.value)


def test_a_ready_file_of_another_pid_is_not_ready(tmp_path: Path) -> None:
    process = _python(tmp_path, STALE).start()
    try:
        process.wait_for(process.ready_file.exists, "wrote its file", timeout=30)
        with pytest.raises(ProcessFailed, match=r"role not ready \(.*\) within 0.5s"):
            process.wait_ready(timeout=0.5)
    finally:
        process.stop(grace=5)


def test_stop_ends_the_whole_group_even_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    process = _python(tmp_path, STUBBORN_CHILD).start()
    child = process.wait_ready(timeout=30)["child"]
    assert alive(child) and sorted(group_members(process.pid)) == sorted([process.pid, child])

    process.stop(grace=5)

    assert not alive(child) and group_members(process.pid) == []
