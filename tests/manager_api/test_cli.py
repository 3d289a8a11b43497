"""The ``modelgate`` CLI as a subprocess against a live manager (uvicorn on a free port)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager_api.app import create_app
from registry import Registry, layout
from registry.records import Model
from tests.manager_api.conftest import TOKENS, LiveManager, settings_for, token_store
from tests.servers.zk import wait_for


@pytest.fixture
def live(zookeeper, zk_root, registry: Registry, tmp_path: Path) -> Iterator[LiveManager]:
    settings = settings_for(zookeeper, zk_root, tmp_path, manager_id="cli-mgr")
    app = create_app(settings, registry, tokens=token_store())
    with LiveManager(app) as server:
        yield server


@pytest.fixture
def mg(live: LiveManager, tmp_path: Path):
    """Run ``modelgate ARGS`` with MODELGATE_MANAGER_URL / MODELGATE_TOKEN set (admin)."""

    def run(*args: str, token: str | None = TOKENS["admin"], check: bool = True, stdin=None):
        env = {**os.environ, "MODELGATE_MANAGER_URL": live.url}
        env.pop("MODELGATE_TOKEN", None)
        if token:
            env["MODELGATE_TOKEN"] = token
        proc = subprocess.run(
            [sys.executable, "-m", "manager_api.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            input=stdin,
            cwd=tmp_path,
        )
        if check:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    return run


def test_models_flow_with_tables_and_json(mg, registry: Registry, sim_workers, tmp_path: Path):
    sim_workers("w1")
    sim_workers("w2")
    out = mg(
        "models",
        "create",
        "digits",
        "--backend",
        "triton",
        "--replicas",
        "2",
        "--constraint",
        "zone=a",
    ).stdout
    assert "digits" in out and "zone=a" in out
    assert registry.get(layout.model("digits"), Model)[0].replicas == 2

    archive = tmp_path / "digits.tar.gz"
    archive.write_bytes(os.urandom(300_000))
    proc = mg("models", "deploy", "digits", "--file", str(archive), "--label", "stable")
    assert "deployed digits version 1" in proc.stdout
    assert "100%" in proc.stderr and "uploading digits.tar.gz" in proc.stderr
    proc = mg("versions", "create", "digits", "--uri", "file:///models/digits/2", "--json")
    assert json.loads(proc.stdout)["version"] == 2

    listed = json.loads(mg("models", "list", "--json").stdout)
    assert [(m["name"], [v["version"] for v in m["versions"]]) for m in listed] == [
        ("digits", [1, 2])
    ]
    table = mg("models", "list").stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "BACKEND", "GROUP", "STATE"]
    assert table[1].split()[:4] == ["digits", "triton", "default", "online"]

    assert (
        "traffic of digits: 1=80,2=20" in mg("models", "traffic", "digits", "1=80", "2=20").stdout
    )
    st = json.loads(mg("models", "status", "digits", "--json").stdout)
    assert st["desired"] == 4 and [v["version"] for v in st["versions"]] == [1, 2]
    assert st["versions"][0]["message"] == "0/2 placed: no triton worker with label zone=a"
    mg("models", "update", "digits", "--clear-constraints")

    def assigned() -> list[int]:
        st = json.loads(mg("models", "status", "digits", "--json").stdout)
        return [v["assigned"] for v in st["versions"]]

    # the reconcile loop (this manager leads) places one replica per version per worker
    wait_for(lambda: assigned() == [2, 2], timeout=30, what="replicas placed")
    text = mg("models", "status", "digits").stdout
    assert "VERSION" in text and "MESSAGE" in text

    assert "digits is offline" in mg("models", "offline", "digits").stdout
    assert "digits is online" in mg("models", "online", "digits").stdout
    mg("versions", "label", "digits", "2", "canary")
    versions = json.loads(mg("versions", "list", "digits", "--json").stdout)
    assert [v["labels"] for v in versions] == [["stable"], ["canary"]]


def test_errors_exit_non_zero_with_the_servers_message(mg):
    proc = mg("models", "get", "nope", check=False)
    assert proc.returncode == 1
    assert "Not found (404): model 'nope' does not exist" in proc.stderr
    proc = mg("models", "create", "x", "--backend", "triton", token=TOKENS["viewer"], check=False)
    assert proc.returncode == 1 and "Forbidden (403)" in proc.stderr
    proc = mg("models", "list", token=None, check=False)
    assert proc.returncode == 1 and "missing bearer token" in proc.stderr
    proc = mg("models", "create", "Bad", "--backend", "triton", check=False)
    assert proc.returncode == 1 and "Invalid argument (422)" in proc.stderr
    proc = mg("models", "traffic", "x", "oops", check=False)
    assert proc.returncode == 2 and "key=value" in proc.stderr


def test_unreachable_manager_exits_2(tmp_path: Path):
    env = {**os.environ, "MODELGATE_MANAGER_URL": "http://127.0.0.1:9", "MODELGATE_TOKEN": "x"}
    proc = subprocess.run(
        [sys.executable, "-m", "manager_api.cli", "groups", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "cannot reach the manager" in proc.stderr


def test_plugins_workers_services_groups(mg, sim_workers, tmp_path: Path):
    sim_workers("w1:9200")
    folder = tmp_path / "digits-plugin"
    folder.mkdir()
    (folder / "plugin.toml").write_text(
        'name = "digits"\nversion = "1.0.0"\nentrypoint = "digits_plugin:Digits"\n'
    )
    (folder / "digits_plugin.py").write_text("class Digits: ...\n")
    proc = mg("plugins", "push", str(folder))
    assert "pushed plugin digits@1.0.0" in proc.stdout and "100%" in proc.stderr
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("plugin.toml", 'name = "ocr"\nversion = "2"\nentrypoint = "ocr:Ocr"\n')
        z.writestr("ocr.py", "class Ocr: ...\n")
    (tmp_path / "ocr.zip").write_bytes(buf.getvalue())
    mg("plugins", "push", str(tmp_path / "ocr.zip"))
    plugins = json.loads(mg("plugins", "list", "--json").stdout)
    assert sorted(p["name"] for p in plugins) == ["digits", "ocr"]
    assert "digits_plugin:Digits" in mg("plugins", "list").stdout
    mg("models", "create", "m", "--backend", "triton", "--plugin", "digits@1.0.0")
    proc = mg("plugins", "delete", "digits", "1.0.0", check=False)
    assert proc.returncode == 1 and "used by model(s) m" in proc.stderr
    mg("plugins", "delete", "ocr", "2")

    workers = mg("workers", "list").stdout
    assert "w1:9200" in workers and "UP" in workers
    mg("workers", "cordon", "w1:9200")
    assert json.loads(mg("workers", "list", "--json").stdout)[0]["cordoned"] is True
    mg("workers", "drain", "w1:9200")
    assert "draining" in mg("workers", "list").stdout
    mg("workers", "uncordon", "w1:9200")
    assert json.loads(mg("workers", "list", "--json").stdout)[0]["cordoned"] is False

    mg("groups", "create", "vision", "--description", "image models")
    assert "image models" in mg("groups", "list").stdout
    mg(
        "services",
        "create",
        "ocr",
        "--url",
        "http://127.0.0.1:9/ocr",
        "--group",
        "vision",
        "--service-timeout",
        "2.5",
    )
    services = json.loads(mg("services", "list", "--json").stdout)
    assert services[0]["timeout_s"] == 2.5 and services[0]["group"] == "vision"
    mg("services", "delete", "ocr")
    assert "deleted group vision" in mg("groups", "delete", "vision").stdout
    assert "(none)" in mg("gateways", "list").stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "modelgate"
    assert script.exists()
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "models" in proc.stdout and "infer" in proc.stdout


def test_manager_refuses_to_start_without_a_valid_tokens_file(tmp_path: Path):
    bad = tmp_path / "tokens.toml"
    bad.write_text('[[tokens]]\nname = "x"\nrole = "root"\ntoken = "12345678"\n')
    for args in (["--tokens-file", str(bad)], ["--tokens-file", str(tmp_path / "missing")]):
        proc = subprocess.run(
            [sys.executable, "-m", "manager_api", "--zk", "127.0.0.1:1", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and "tokens file" in proc.stderr, proc.stderr
