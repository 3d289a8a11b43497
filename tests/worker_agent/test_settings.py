"""WorkerSettings: CLI flags over MODELGATE_WORKER_* env, validation, and the entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from registry.settings_cli import build_parser, parse_settings
from tests.servers.tfserving import REPO
from worker_agent.settings import WorkerSettings


def from_args(argv: list[str]) -> WorkerSettings:
    return parse_settings(WorkerSettings, argv, prog="test", description="test")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MODELGATE_WORKER_"):
            monkeypatch.delenv(key)


def test_flags_from_the_issue_map_to_fields() -> None:
    s = from_args(
        [
            "--zk", "zk1:2181,zk2:2181", "--root", "/mg", "--worker-id", "host-a:8001",
            "--backend", "tfserving", "--backend-address", "10.0.0.5:8500",
            "--launch", "tensorflow_model_server --port=8500", "--model-root", "/srv/models",
            "--labels", "zone=eu-1, gpu=a100", "--capacity-memory-mb", "16384",
            "--status-port", "9300", "--heartbeat-interval-s", "2.5", "--drain-s", "7",
        ]
    )  # fmt: skip
    assert (s.zk, s.root, s.worker_id, s.backend) == (
        "zk1:2181,zk2:2181", "/mg", "host-a:8001", "tfserving"
    )  # fmt: skip
    assert s.backend_address == "10.0.0.5:8500" and s.launch is not None
    assert s.model_root == Path("/srv/models")
    assert s.labels == {"zone": "eu-1", "gpu": "a100"}
    assert (s.capacity_memory_mb, s.status_port) == (16384, 9300)
    assert (s.heartbeat_interval_s, s.drain_s) == (2.5, 7.0)


def test_defaults_and_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = WorkerSettings(backend_address="x:1")
    assert (defaults.status_port, defaults.heartbeat_interval_s) == (9200, 5.0)
    assert defaults.root == "/modelgate" and defaults.backend == "triton"
    monkeypatch.setenv("MODELGATE_WORKER_LAUNCH_TRITON", "true")
    monkeypatch.setenv("MODELGATE_WORKER_LABELS", "rack=r7")
    monkeypatch.setenv("MODELGATE_WORKER_HEARTBEAT_INTERVAL_S", "1")
    s = from_args(["--status-port", "0"])
    assert s.launch_triton and s.backend == "triton"
    assert s.labels == {"rack": "r7"} and s.heartbeat_interval_s == 1.0
    assert s.status_port == 0
    assert all(f.description for f in WorkerSettings.model_fields.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "backend-address is required"),
        (["--launch-triton", "--backend", "tfserving"], "needs --backend triton"),
        (["--backend-address", "x:1", "--labels", "novalue"], "k=v"),
        (["--backend-address", "x:1", "--worker-id", "bad/id"], "invalid worker id"),
        (["--backend-address", "x:1", "--backend", "onnx"], "triton"),
    ],
)
def test_invalid_settings_are_explained(args: list[str], message: str) -> None:
    with pytest.raises((ValidationError, ValueError), match=message):
        from_args(args)


def test_entry_point_exits_nonzero_with_a_clear_message() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "worker_agent", "--backend", "tfserving"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "backend-address is required" in bad.stderr
    no_zk = subprocess.run(
        [
            sys.executable, "-m", "worker_agent", "--backend", "tfserving",
            "--backend-address", "127.0.0.1:1", "--zk", "127.0.0.1:1",
            "--zk-connect-timeout-s", "1", "--status-port", "0", "--status-host", "127.0.0.1",
            "--model-root", "/tmp/modelgate-worker-test-models",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert no_zk.returncode == 1
    assert "could not connect to ZooKeeper at 127.0.0.1:1" in no_zk.stderr


def test_the_blob_token_comes_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser(WorkerSettings, "python -m worker_agent", "test")
    assert "--blob-token" not in parser.format_help()
    assert "MODELGATE_WORKER_BLOB_TOKEN" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend-address", "x:1", "--blob-token", "s3cret"])
    monkeypatch.setenv("MODELGATE_WORKER_BLOB_TOKEN", "s3cret")
    assert from_args(["--backend-address", "x:1"]).blob_token == "s3cret"
