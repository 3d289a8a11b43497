"""The console in a real browser: headless Chromium driven by Playwright (console.mjs) against
the real manager, ZooKeeper, registered workers and a gateway serving real calls."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from registry import layout
from registry.records import Model, WorkerSpec
from tests.gateway.conftest import ADD_ONE
from tests.manager_api.conftest import TOKENS
from tests.manager_api.ui.conftest import IDLE, Console
from tests.servers.zk import wait_for

HERE = Path(__file__).parent
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.timeout(240)


def require_browser() -> None:
    node = shutil.which("node")
    if node is None or not CHROMIUM.exists():
        pytest.fail(
            "the console tests need node and Debian's chromium: run `make setup`, or "
            "`apt-get install -y nodejs chromium`"
        )
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        pytest.fail(
            "playwright-core is missing: run `make setup`, or `npm ci` in tests/manager_api/ui"
        )


def browse(
    console: Console, tmp_path: Path, scenario: str, token: str, *args: str
) -> dict[str, Any]:
    """Run one console.mjs scenario with ``token``; its JSON report. The page's screenshot is
    saved either way; its path is in the failure message and in the printed report."""
    require_browser()
    screenshot = tmp_path / f"console-{scenario}.png"
    proc = subprocess.run(
        ["node", str(HERE / "console.mjs"), scenario, console.url, str(screenshot), *args],
        env={**os.environ, "CONSOLE_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, (
        f"console.mjs {scenario} failed (screenshot: {screenshot}):\n{proc.stderr}{proc.stdout}"
    )
    print(f"console.mjs {scenario}: {proc.stdout.strip()}")
    return json.loads(proc.stdout)


def test_pages_render_for_an_admin_with_load_charts(console: Console, tmp_path: Path) -> None:
    def busy_samples() -> int:
        samples = console.admin.get(f"/v1/models/{ADD_ONE}/load").json()["samples"]
        return sum(s["calls_per_s"] > 0 for s in samples)

    # a line needs two samples with calls: call until the API the page reads has them
    wait_for(lambda: console.call() and busy_samples() >= 2, what="two load samples with calls")

    page = browse(console, tmp_path, "inspect", TOKENS["admin"])

    assert page["whoami"] == "root (admin)"
    workers = {w["id"]: w for w in page["workers"]}
    assert set(workers) == {"worker-a", "worker-b"}
    assert "zone=a" in workers["worker-a"]["text"] and "4096 MiB" in workers["worker-a"]["text"]
    assert workers["worker-a"]["buttons"] == ["cordon", "drain"]
    (gateway,) = page["gateways"]
    assert f":{console.gateway.port('grpc')}" in gateway
    assert f":{console.gateway.port('metrics')}" in gateway

    add = page["models"][ADD_ONE]
    assert add["state"] == "online" and add["versions"] == 2
    assert add["buttons"] == ["offline", "set weights"] and add["weight_inputs"] == 2
    assert set(add["charts"]) == {"calls/s", "errors", "p50", "p99"}
    assert add["charts"]["calls/s"] >= 2 and add["charts"]["p99"] >= 2
    idle = page["models"][IDLE]
    assert idle["charts"] == {"calls/s": 0, "errors": 0, "p50": 0, "p99": 0}
    # newest first: the set-up's last POST
    assert "POST /v1/models/{name}/versions" in page["audit"][0]
    assert f"/v1/models/{IDLE}/versions" in page["audit"][0]
    # the token lives in the tab's sessionStorage only (htmx keeps its current path there too)
    assert "modelgate.token" in page["storage_keys"] and page["local_storage_keys"] == []
    assert page["console_errors"] == []


def test_offline_click_takes_the_model_offline_in_zookeeper(
    console: Console, tmp_path: Path
) -> None:
    result = browse(
        console, tmp_path, "click", TOKENS["operator"],
        f"model-{ADD_ONE}", "offline", f"#model-{ADD_ONE}[data-state=offline]",
    )  # fmt: skip

    model, _ = console.registry.get(layout.model(ADD_ONE), Model)
    assert model.state == "offline"
    assert result["flash"] == f"offline {ADD_ONE}: done"
    after = result["after"]["models"][ADD_ONE]
    assert after["state"] == "offline" and after["buttons"][0] == "online"
    entries = [json.loads(line) for line in console.audit_log.read_text().splitlines()]
    assert {
        "who": "ads-ops",
        "role": "operator",
        "action": "POST /v1/models/{name}:offline",
        "target": f"/v1/models/{ADD_ONE}:offline",
        "status": 200,
    }.items() <= entries[-1].items()
    # an operator reads no audit log and may not act on workers or on other groups' models
    assert result["after"]["audit"] == [
        "reading the audit log needs role admin; token 'ads-ops' is operator"
    ]
    assert all(w["buttons"] == [] for w in result["after"]["workers"])
    assert result["after"]["models"][IDLE]["buttons"] == []


def test_an_admin_cordons_a_worker_and_sets_traffic_weights(
    console: Console, tmp_path: Path
) -> None:
    result = browse(
        console, tmp_path, "click", TOKENS["admin"],
        "worker-worker-b", "cordon", "#worker-worker-b .badge.cordoned",
    )  # fmt: skip

    spec, _ = console.registry.get(layout.assignments("worker-b"), WorkerSpec)
    assert spec.cordoned and not spec.draining
    row = next(w for w in result["after"]["workers"] if w["id"] == "worker-b")
    assert row["buttons"] == ["uncordon", "drain"]
    assert "POST /v1/workers/{worker_id}:cordon" in result["after"]["audit"][0]

    weighted = browse(console, tmp_path, "weights", TOKENS["admin"], ADD_ONE, "1=80,2=20")

    model, _ = console.registry.get(layout.model(ADD_ONE), Model)
    assert model.traffic == {"1": 80, "2": 20}
    assert "PUT /v1/models/{name}/traffic" in weighted["after"]["audit"][0]


def test_a_viewer_sees_no_action(console: Console, tmp_path: Path) -> None:
    page = browse(console, tmp_path, "inspect", TOKENS["viewer"])

    assert page["whoami"] == "watcher (viewer)"
    assert set(page["models"]) == {ADD_ONE, IDLE}
    for shown in page["models"].values():
        assert shown["buttons"] == [] and shown["weight_inputs"] == 0
    assert all(w["buttons"] == [] for w in page["workers"]) and len(page["workers"]) == 2
    # and the API refuses the viewer anyway
    refused = console.admin.post(
        f"/v1/models/{ADD_ONE}:offline", headers={"Authorization": f"Bearer {TOKENS['viewer']}"}
    )
    assert refused.status_code == 403
    model, _ = console.registry.get(layout.model(ADD_ONE), Model)
    assert model.state == "online"


def test_a_bad_token_gets_the_login_page(console: Console, tmp_path: Path) -> None:
    page = browse(console, tmp_path, "refused", "not-a-known-token")

    assert page["login_visible"] and not page["console_visible"]
    assert page["error"] == "Token refused: unknown bearer token; check the manager's tokens file"
    assert "modelgate.token" not in page["storage_keys"]  # the refused token is forgotten
