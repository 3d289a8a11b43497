"""registry.logs: the one JSON formatter every role uses (call context, traceback key)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys

from registry import logs
from tests.servers.tfserving import REPO


def _record(exc_info: bool = False) -> logging.LogRecord:
    info = None
    if exc_info:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            info = sys.exc_info()
    return logging.LogRecord("worker_agent.reconciler", logging.ERROR, __file__, 1, "hi %s",
                             ("there",), info)  # fmt: skip


def test_json_lines_carry_the_call_and_the_traceback_as_exception() -> None:
    async def in_a_call() -> dict[str, object]:
        logs.set_call("digits", "2", "rid-7")
        return json.loads(logs.JsonFormatter().format(_record(exc_info=True)))

    doc = asyncio.run(in_a_call())
    assert doc["message"] == "hi there" and doc["level"] == "ERROR"
    assert doc["logger"] == "worker_agent.reconciler"
    assert (doc["model"], doc["version"], doc["request_id"]) == ("digits", "2", "rid-7")
    assert "RuntimeError: boom" in str(doc["exception"])
    outside = json.loads(logs.JsonFormatter().format(_record()))
    assert "model" not in outside and "exception" not in outside


def test_the_manager_logs_json_lines_with_log_json(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    out = subprocess.run(
        [sys.executable, "-m", "manager_api", "--log-json", "--zk", "127.0.0.1:1",
         "--zk-connect-timeout-s", "1", "--tokens-file", str(tmp_path / "missing.toml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert lines and lines[-1]["level"] == "ERROR" and lines[-1]["logger"] == "manager_api"
