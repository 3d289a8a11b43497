"""The ``modelgate`` CLI as a subprocess against a live manager (uvicorn on a free port)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings
from manager_api.app import create_app
from registry import Registry, layout
from registry.records import (
    Gateway,
    GatewayPluginStatus,
    Model,
    OutOfMemory,
    ResponseCache,
    Scale,
    Shadow,
    Tolerance,
    Usage,
)
from tests.gateway.conftest import (
    ADD_ONE,
    RunningGateway,
    gateway_settings,  # noqa: F401 (a fixture: the gateway tests' settings)
    load_add_one,
    put_model,
    put_route,
    put_version,
)
from tests.manager_api.conftest import TOKENS, LiveManager, settings_for, token_store
from tests.servers.tls import self_signed
from tests.servers.zk import wait_for
from worker_agent.tritonserver import TritonServer


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


def test_autoscale_limits_and_pinned_options(mg, registry: Registry, sim_workers):
    created = mg(
        "models",
        "create",
        "hot",
        "--backend",
        "triton",
        "--min-replicas",
        "0",
        "--max-replicas",
        "3",
        "--target-in-flight",
        "4",
        "--idle-seconds",
        "60",
        "--max-concurrency",
        "8",
        "--rate-limit",
        "100",
        "--burst",
        "20",
        "--pinned",
    ).stdout
    assert "0-3 replicas, 4 in flight per replica, to zero after 60s idle" in created
    assert "8 in flight, 100 calls/s (burst 20)" in created
    model = registry.get(layout.model("hot"), Model)[0]
    assert model.autoscale is not None and model.autoscale.idle_seconds == 60
    assert model.limits is not None and model.limits.rate_limit == 100 and model.pinned

    # one option merges into the stored setting; a new target replaces the old one
    mg(
        "models",
        "update",
        "hot",
        "--max-replicas",
        "5",
        "--target-calls-per-s",
        "50",
        "--no-pinned",
    )
    model = registry.get(layout.model("hot"), Model)[0]
    assert model.autoscale is not None
    assert (model.autoscale.min_replicas, model.autoscale.max_replicas) == (0, 5)
    assert (model.autoscale.target_in_flight, model.autoscale.target_calls_per_s) == (None, 50)
    assert model.limits is not None and model.limits.burst == 20 and not model.pinned

    proc = mg("models", "update", "hot", "--no-limits", "--burst", "3", check=False)
    assert proc.returncode == 2 and "--no-limits turns limits off: drop --burst" in proc.stderr
    proc = mg("models", "update", "hot", "--min-replicas", "9", check=False)
    assert proc.returncode == 1 and "min_replicas 9 is above max_replicas 5" in proc.stderr
    proc = mg(
        "models", "create", "x", "--backend", "triton", "--target-in-flight", "1",
        "--target-calls-per-s", "1", check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
    mg("models", "update", "hot", "--no-limits", "--no-autoscale")
    model = registry.get(layout.model("hot"), Model)[0]
    assert model.autoscale is None and model.limits is None

    mg("models", "update", "hot", "--min-replicas", "1", "--max-replicas", "2")
    mg("versions", "create", "hot", "--uri", "file:///models/hot/1")
    registry.put(layout.scale("hot"), Scale(model="hot", replicas=2, reason="busy", changed=0.0))
    wait_for(
        lambda: json.loads(mg("models", "status", "hot", "--json").stdout)["scale"],
        timeout=20,
        what="the leader's choice in the status",
    )
    text = mg("models", "status", "hot").stdout
    assert "2 replicas since 00:00:00 UTC: busy" in text
    assert "1-2 replicas" in text
    table = mg("models", "status").stdout.splitlines()
    assert table[0].split()[:5] == ["MODEL", "STATE", "READY", "DESIRED", "LOAD"]

    sim_workers(
        "w1",
        capacity_cpu=4.0,
        capacity_memory_mb=2048,
        usage=Usage(cpu=1.5, memory_mb=1536.0),
        ooms={"hot@1": OutOfMemory(memory_mb=2040.0, capacity_mb=2048)},
    )
    sim_workers("w2")
    wait_for(
        lambda: len(json.loads(mg("workers", "list", "--json").stdout)) == 2,
        timeout=20,
        what="both workers listed",
    )
    rows = {line.split()[0]: line for line in mg("workers", "list").stdout.splitlines()}
    assert "CPU" in rows["WORKER"] and "HEADROOM" in rows["WORKER"]
    assert "1.5/4 cores" in rows["w1"] and "1.54e+03/2048 MiB" not in rows["w1"]
    assert "1536/2048 MiB" in rows["w1"] and "25%" in rows["w1"] and "hot@1" in rows["w1"]


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
    # a token is a secret: only MODELGATE_TOKEN, never argv (visible to every local user)
    proc = mg("groups", "list", "--token", TOKENS["admin"], token=None, check=False)
    assert proc.returncode == 2 and "unrecognized arguments: --token" in proc.stderr


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


def audited(tmp_path: Path) -> list[str]:
    """The actions in the live manager's audit log (one per mutating request)."""
    log = tmp_path / "audit.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(line)["action"] for line in lines]


def test_deploy_of_a_missing_model_fails_before_uploading(mg, tmp_path: Path):
    archive = tmp_path / "ghost.tar.gz"
    archive.write_bytes(os.urandom(300_000))
    proc = mg("models", "deploy", "ghost", "--file", str(archive), check=False)
    assert proc.returncode == 1
    assert "Not found (404): model 'ghost' does not exist" in proc.stderr
    assert "--backend triton|tfserving creates it" in proc.stderr
    assert "uploading" not in proc.stderr
    assert audited(tmp_path) == []  # nothing was POSTed

    proc = mg("models", "deploy", "ghost", "--file", str(archive), "--backend", "triton")
    assert "deployed ghost version 1" in proc.stdout and "100%" in proc.stderr
    assert audited(tmp_path) == ["POST /v1/models", "POST /v1/models/{name}/versions:upload"]


def test_deploy_backend_creates_the_model_only_when_the_lookup_says_404(mg, tmp_path: Path):
    args = ("models", "deploy", "m", "--backend", "triton", "--uri", "file:///models/m/1")
    proc = mg(*args, token="not-a-known-token", check=False)
    assert proc.returncode == 1 and "Unauthorized (401)" in proc.stderr, proc.stderr
    assert audited(tmp_path) == []  # no create attempted after the failed lookup
    assert "deployed m version 1" in mg(*args).stdout
    assert "deployed m version 2" in mg(*args).stdout  # exists now: a second version
    assert audited(tmp_path).count("POST /v1/models") == 1


def test_gateways_list_shows_plugins_and_their_load_errors(mg, registry: Registry):
    error = "plugin digits@1.0.2 failed to load: ValueError: no weights.npz in the package"
    record = Gateway(
        gateway_id="gw-1",
        address="10.0.0.7:8500",
        version="0.1.0",
        plugins={"digits": GatewayPluginStatus(serving="digits@1.0.1", error=error)},
    )
    registry.register_ephemeral(layout.gateway("gw-1"), record)
    lines = mg("gateways", "list").stdout.splitlines()
    assert lines[0].split() == ["GATEWAY", "ADDRESS", "VERSION", "PLUGINS", "PLUGIN", "ERRORS"]
    assert lines[1].split()[:4] == ["gw-1", "10.0.0.7:8500", "0.1.0", "digits=digits@1.0.1"]
    assert lines[1].endswith(f"digits: {error}")
    listed = json.loads(mg("gateways", "list", "--json").stdout)
    assert listed[0]["plugins"] == {"digits": {"serving": "digits@1.0.1", "error": error}}


REQUEST = json.dumps(
    {"inputs": [{"name": "INPUT0", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
)


@pytest.fixture
def add_one_gateway(
    gateway_settings: GatewaySettings,  # noqa: F811 (the fixture imported above)
    registry: Registry,
    triton: TritonServer,
) -> Iterator[Callable[..., RunningGateway]]:
    """Start gateways (settings overrides as keywords) routing add_one_gw to the real Triton."""
    load_add_one(triton)
    put_model(registry, ADD_ONE)
    put_version(registry, ADD_ONE, 1)
    put_route(registry, ADD_ONE, 1, "w1", triton.address)
    started: list[RunningGateway] = []

    def start(**overrides: str) -> RunningGateway:
        started.append(RunningGateway(gateway_settings.model_copy(update=overrides)))
        wait_for(lambda: started[-1].instances(ADD_ONE) == 1, timeout=30, what="the route")
        return started[-1]

    yield start
    for gateway in started:
        gateway.stop()


def test_json_infer_prints_a_json_payload_as_json(mg, add_one_gateway):
    gateway = add_one_gateway()
    call = ("infer", ADD_ONE, "--gateway", gateway.address, "--data", REQUEST)
    answer = json.loads(mg(*call, "--json", "--version", "1").stdout)
    assert answer["model"] == ADD_ONE and answer["version"] == "1"
    assert answer["content_type"] == "application/json"
    assert answer["payload"]["outputs"][0]["name"] == "OUTPUT0"
    assert answer["payload"]["outputs"][0]["data"] == [2.0, 3.0]
    # without --json the payload is printed as it came
    assert json.loads(mg(*call).stdout)["outputs"][0]["data"] == [2.0, 3.0]


def test_infer_over_mtls_with_certificate_files(mg, add_one_gateway, tmp_path: Path):
    cert, key = self_signed(tmp_path)
    gateway = add_one_gateway(tls_cert=str(cert), tls_key=str(key), tls_client_ca=str(cert))
    # the certificate names localhost, not 127.0.0.1
    call = ("infer", ADD_ONE, "--gateway", f"localhost:{gateway.app.port}", "--data", REQUEST)
    tls = ("--tls-ca", str(cert), "--tls-cert", str(cert), "--tls-key", str(key))
    assert json.loads(mg(*call, *tls).stdout)["outputs"][0]["data"] == [2.0, 3.0]

    no_client_cert = mg(*call, "--tls-ca", str(cert), "--timeout", "5", check=False)
    assert no_client_cert.returncode == 2 and "UNAVAILABLE" in no_client_cert.stderr
    plain = mg(*call, "--timeout", "5", check=False)
    assert plain.returncode == 2 and "UNAVAILABLE" in plain.stderr
    half = mg(*call, "--tls-cert", str(cert), check=False)
    assert half.returncode == 2 and "both --tls-cert and --tls-key" in half.stderr
    missing = mg(*call, "--tls-ca", str(tmp_path / "nope.pem"), check=False)
    assert missing.returncode == 2 and "cannot read --tls-ca" in missing.stderr


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


def stored(registry: Registry, name: str = "m1") -> Model:
    return registry.get(layout.model(name), Model)[0]


def test_models_cache_and_shadow_options(mg, registry: Registry):
    out = mg("models", "create", "m1", "--backend", "triton", "--cache-ttl", "60",
             "--shadow", "2:10").stdout  # fmt: skip
    assert "ttl 60s, at most 1000 entries" in out and "10% to version 2, exact" in out
    assert stored(registry).cache == ResponseCache(ttl_s=60)
    assert stored(registry).shadow == Shadow(target=2, percent=10)

    # a part alone keeps the rest
    mg("models", "update", "m1", "--cache-max-entries", "50",
       "--shadow-tolerance", "absolute=0.5,relative=0.01")  # fmt: skip
    assert stored(registry).cache == ResponseCache(ttl_s=60, max_entries=50)
    assert stored(registry).shadow == Shadow(
        target=2, percent=10, tolerance=Tolerance(absolute=0.5, relative=0.01)
    )
    mg("models", "update", "m1", "--shadow", "other:25")
    assert stored(registry).shadow == Shadow(
        target="other", percent=25, tolerance=Tolerance(absolute=0.5, relative=0.01)
    )
    text = mg("models", "get", "m1").stdout
    assert "ttl 60s, at most 50 entries" in text
    assert "25% to model other, within absolute=0.5,relative=0.01" in text
    got = json.loads(mg("models", "get", "m1", "--json").stdout)
    assert got["cache"] == {"ttl_s": 60.0, "max_entries": 50}

    mg("models", "update", "m1", "--no-cache", "--no-shadow")
    assert stored(registry).cache is None and stored(registry).shadow is None
    assert "cache" in mg("models", "get", "m1").stdout  # shown as "-"


def test_models_cache_and_shadow_usage_errors_send_nothing(mg, registry: Registry):
    mg("models", "create", "m1", "--backend", "triton")
    for args, words in [
        (["--cache-max-entries", "5"], "set --cache-ttl SECONDS too"),
        (["--shadow-tolerance", "absolute=1"], "set --shadow TARGET:PERCENT too"),
        (["--shadow", "10"], "use TARGET:PERCENT"),
        (["--no-cache", "--cache-ttl", "5"], "--no-cache turns the cache off"),
        (["--no-shadow", "--shadow", "2:5"], "--no-shadow turns shadow traffic off"),
        (["--shadow-tolerance", "oops", "--shadow", "2:5"], "key=value"),
    ]:
        proc = mg("models", "update", "m1", *args, check=False)
        assert proc.returncode == 2 and words in proc.stderr, (args, proc.stderr)
    proc = mg("models", "update", "m1", "--shadow", "2:200", check=False)
    assert proc.returncode == 1 and "shadow.percent" in proc.stderr
    model = stored(registry)
    assert model.cache is None and model.shadow is None
