"""No drift between deploy/ and the code: every MODELGATE_* variable and role port used in
the Compose and Kubernetes files exists in the role's settings class, every ``python -m``
names a real module, and every metric the dashboard plots is defined in a metrics module."""

from __future__ import annotations

import importlib.util
import json
import re
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic_settings import BaseSettings

from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from manager_api.metrics import ManagerMetrics
from manager_api.settings import ManagerSettings
from registry.settings_cli import build_parser
from tests.deploy._manifests import (
    COMPOSE_FILE,
    DEPLOY,
    DOCKERFILE,
    REPO,
    k8s_resources,
    role_of,
)
from worker_agent.metrics import WorkerMetrics
from worker_agent.settings import WorkerSettings

SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "worker_agent": WorkerSettings,
    "manager_api": ManagerSettings,
}
# The settings that are ports, per role (their defaults are the role's default ports).
PORT_SETTINGS = {
    "gateway": ("port", "metrics_port"),
    "worker_agent": ("status_port",),
    "manager_api": ("port",),
}


def env_prefix(role: str) -> str:
    return str(SETTINGS[role].model_config["env_prefix"])


def env_names(role: str) -> set[str]:
    prefix = env_prefix(role)
    return {prefix + name.upper() for name in SETTINGS[role].model_fields}


def role_ports(role: str, env: dict[str, str]) -> set[int]:
    """The ports a role listens on, given the MODELGATE_* variables of its container."""
    prefix = env_prefix(role)
    fields = SETTINGS[role].model_fields
    return {
        int(env.get(prefix + name.upper(), fields[name].default)) for name in PORT_SETTINGS[role]
    }


def _compose_roles() -> list[tuple[str, str, dict[str, Any]]]:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    found = []
    for name, service in services.items():
        role = role_of(service.get("command"))
        if role is not None:
            found.append((f"compose service {name}", role, service))
    return found


def _k8s_roles() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path, doc in k8s_resources():
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            role = role_of(c.get("command") or c.get("args"))
            if role is not None:
                found.append((f"{path.name} {doc['metadata']['name']}/{c['name']}", role, c))
    return found


def test_settings_classes_are_read_and_have_the_documented_defaults() -> None:
    # The drift checks below are only as good as what they read: make sure it is real.
    assert env_prefix("gateway") == "MODELGATE_GATEWAY_"
    assert env_prefix("worker_agent") == "MODELGATE_WORKER_"
    assert env_prefix("manager_api") == "MODELGATE_MANAGER_"
    assert role_ports("gateway", {}) == {8500, 8502}
    assert role_ports("worker_agent", {}) == {9200}
    assert role_ports("manager_api", {}) == {8080}
    assert "MODELGATE_WORKER_BLOB_TOKEN" in env_names("worker_agent")


def test_roles_found_in_compose_and_k8s_name_real_modules() -> None:
    roles = _compose_roles() + _k8s_roles()
    assert {r for _, r, _ in roles} == set(SETTINGS), roles
    for where, role, _ in roles:
        assert role in SETTINGS, f"{where}: {role}"
        assert importlib.util.find_spec(f"{role}.__main__") is not None, where


def test_compose_env_names_exist_in_the_settings_of_the_role_they_configure() -> None:
    for where, role, service in _compose_roles():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{where}: use a mapping for environment"
        used = {k for k in env if k.startswith("MODELGATE_")}
        assert used, f"{where} sets no MODELGATE_* variable"
        unknown = used - env_names(role)
        assert not unknown, f"{where} ({role}) sets variables its settings lack: {unknown}"


def test_k8s_env_names_exist_in_the_settings_of_the_role_they_configure() -> None:
    for where, role, container in _k8s_roles():
        used = {e["name"] for e in container.get("env", []) if e["name"].startswith("MODELGATE_")}
        assert used, f"{where} sets no MODELGATE_* variable"
        unknown = used - env_names(role)
        assert not unknown, f"{where} ({role}) sets variables its settings lack: {unknown}"


def test_compose_ports_are_the_ports_the_roles_listen_on() -> None:
    for where, role, service in _compose_roles():
        listening = role_ports(role, service.get("environment", {}))
        for mapping in service.get("ports", []):
            container_port = int(str(mapping).split(":")[-1].split("/")[0])
            assert container_port in listening, (
                f"{where}: {mapping} but {role} listens on {listening}"
            )


def test_k8s_ports_and_probes_are_the_ports_the_roles_listen_on() -> None:
    for where, role, container in _k8s_roles():
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        listening = role_ports(role, env)
        named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        assert set(named.values()) == listening, f"{where}: {named} vs {listening}"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            spec = container.get(probe)
            if spec is None:
                continue
            action = spec.get("grpc") or spec.get("httpGet") or spec.get("tcpSocket")
            port = named.get(action["port"], action["port"])
            assert port in listening, f"{where} {probe} port {action['port']}"


def test_prometheus_targets_use_the_role_ports() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    roles = {
        name: role
        for name, role in ((n, role_of(s.get("command"))) for n, s in services.items())
        if role
    }
    checked = 0
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host in services, f"{job['job_name']}: no compose service {host}"
                if host in roles:
                    env = services[host].get("environment", {})
                    assert int(port) in role_ports(roles[host], env), target
                    checked += 1
    assert checked >= 5


def test_dockerfile_names_real_modules_and_settings() -> None:
    text = DOCKERFILE.read_text()
    modules = set(re.findall(r"python\"?,? \"?-m\"?,? \"?([a-z_]+)", text))
    assert {"gateway", "worker_agent", "manager_api"} <= modules, modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module
        if module in SETTINGS:
            assert importlib.util.find_spec(f"{module}.__main__") is not None, module
    every = set().union(*(env_names(r) for r in SETTINGS))
    used = set(re.findall(r"\b(MODELGATE_[A-Z_]+)=", text))
    assert used and used <= every, used - every
    # The image's health check probes each role on its real port setting.
    spec = importlib.util.spec_from_file_location("hc", REPO / "deploy/docker/healthcheck.py")
    assert spec is not None and spec.loader is not None
    healthcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthcheck)
    assert set(healthcheck.ROLES) == set(SETTINGS)
    for role, (prefix, flag, setting, default, _probe) in healthcheck.ROLES.items():
        assert prefix == env_prefix(role)
        assert prefix + setting in env_names(role)
        field = SETTINGS[role].model_fields[setting.lower()]
        assert field.default == default, role
        assert flag == "--" + setting.lower().replace("_", "-")


def _defined_metric_names() -> set[str]:
    names: set[str] = set()
    for cls in (GatewayMetrics, WorkerMetrics, ManagerMetrics):
        registry = CollectorRegistry()
        cls(registry)
        for family in registry.collect():
            suffixes = {
                "counter": ("_total",),
                "histogram": ("_bucket", "_sum", "_count"),
            }.get(family.type, ("",))
            names.update(family.name + s for s in suffixes)
    return names


def test_dashboard_and_docs_only_use_metrics_the_code_defines() -> None:
    defined = _defined_metric_names()
    assert "modelgate_gateway_requests_total" in defined
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "modelgate.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {m for e in exprs for m in re.findall(r"\bmodelgate_[a-z_]+", e)}
    assert len(used) >= 15, used
    assert used <= defined, f"not defined in */metrics.py: {sorted(used - defined)}"


DOCS = ["README.md", "docs/deploy.md", "docs/gateway.md", "docs/worker_agent.md", "docs/manager.md"]
#: The flags each role's doc documents in its settings table (``| `--flag` ...``).
ROLE_DOCS = {"gateway": "docs/gateway.md", "worker_agent": "docs/worker_agent.md"}


@pytest.mark.parametrize("doc", DOCS)
def test_docs_only_name_real_settings(doc: str) -> None:
    path = REPO / doc
    if not path.exists():
        pytest.fail(f"{doc} is missing")
    every = set().union(*(env_names(r) for r in SETTINGS))
    # The admin CLI's own variables (MODELGATE_MANAGER_URL, MODELGATE_TOKEN, ...).
    cli = "".join(f.read_text() for f in sorted((REPO / "manager_api/cli").glob("*.py")))
    every |= set(re.findall(r"\"(MODELGATE_[A-Z_]+)\"", cli))
    used = set(re.findall(r"\b(MODELGATE_[A-Z_]*[A-Z])\b", path.read_text()))
    used -= {"MODELGATE_INTERNAL_TOKEN", "MODELGATE_IMAGE"}  # compose's .env, not settings
    assert used, f"{doc} names no setting"
    assert used <= every, used - every


@pytest.mark.parametrize("role", sorted(ROLE_DOCS))
def test_settings_tables_name_real_flags(role: str) -> None:
    parser = build_parser(SETTINGS[role], role, role)
    real = set(re.findall(r"--[a-z][a-z0-9-]*", parser.format_help()))
    rows = [
        line
        for line in (REPO / ROLE_DOCS[role]).read_text().splitlines()
        if line.startswith("| `--")
    ]
    documented = {f for row in rows for f in re.findall(r"`(--[a-z][a-z0-9-]*)", row.split("|")[1])}
    assert len(documented) >= 10, documented
    assert documented <= real, (
        f"{ROLE_DOCS[role]} documents flags {role} lacks: {documented - real}"
    )
