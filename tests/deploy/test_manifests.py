"""deploy/: every YAML parses, every Kubernetes manifest validates offline, and the
Kubernetes/Compose/Docker files have what an operator expects (probes, limits, non-root)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy._manifests import (
    COMPOSE_FILE,
    DEPLOY,
    DOCKERFILE,
    K8S,
    REPO,
    documents,
    k8s_manifests,
    k8s_resources,
    pod_specs,
    role_of,
    yaml_files,
)

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # oldest we claim (gRPC probes GA in 1.27) and newest


def _kubernetes_validate() -> str:
    exe = Path(sys.executable).with_name("kubernetes-validate")
    found = str(exe) if exe.exists() else shutil.which("kubernetes-validate")
    if found is None:
        pytest.fail(
            "kubernetes-validate is not installed; install it with "
            "`.venv/bin/pip install kubernetes-validate` (part of the dev extras)"
        )
    return found


def test_every_yaml_file_parses() -> None:
    files = yaml_files()
    assert len(files) >= 10, files
    for path in files:
        docs = documents(path)
        assert docs, f"{path} is empty"


def test_dashboard_json_parses_and_has_the_panels_asked_for() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "modelgate.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in (
        "Requests by model",
        "Errors by model and code",
        "Latency p99 by stage",
        "Routes per model (ready instances)",
        "Retries by model",
        "Ejections by backend address",
        "Worker model states",
        "Fast path and Python path by model",
    ):
        assert wanted in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_validate_strict_offline(version: str) -> None:
    files = k8s_manifests()
    n_docs = sum(len(documents(p)) for p in files)
    result = subprocess.run(
        [_kubernetes_validate(), "--strict", "-k", version, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    # A kind without a schema only WARNs (exit 0): count the passes instead.
    problems = [line for line in out.splitlines() if not line.startswith("INFO")]
    assert problems == [], out
    assert out.count(" passed for resource ") == n_docs, out


def test_kustomizations_list_files_that_exist_and_cover_every_manifest() -> None:
    listed: set[Path] = set()
    for kfile in sorted(K8S.rglob("kustomization.yaml")):
        kust = yaml.safe_load(kfile.read_text())
        for entry in kust.get("resources", []):
            target = (kfile.parent / entry).resolve()
            assert target.exists(), f"{kfile}: {entry} does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), f"{kfile}: {entry}"
            else:
                listed.add(target)
        for gen in kust.get("secretGenerator", []):
            for item in gen.get("files", []):
                name = item.split("=", 1)[-1]
                example = kfile.parent / (Path(name).stem + ".example" + Path(name).suffix)
                ignore = (kfile.parent / ".gitignore").read_text().split()
                assert name in ignore, f"{kfile}: secret file {name} must be git-ignored"
                if name.endswith(".toml"):
                    assert example.exists(), f"{kfile}: give {example.name} for {name}"
    assert set(map(Path.resolve, k8s_manifests())) == listed


def test_k8s_has_the_workloads_asked_for() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in k8s_resources()}
    zk = kinds[("StatefulSet", "zookeeper")]
    assert zk["spec"]["replicas"] == 3
    triton = kinds[("StatefulSet", "worker-triton")]["spec"]["template"]["spec"]
    names = {c["name"] for c in triton["containers"]}
    assert names == {"triton", "agent"}
    shared = [{m["name"] for m in c["volumeMounts"]} for c in triton["containers"]]
    assert "models" in shared[0] & shared[1], "model server and agent share the model volume"
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert (kind, "gateway") in kinds, kind
    assert ("Deployment", "manager") in kinds and ("Service", "manager") in kinds
    assert ("ConfigMap", "modelgate-prometheus") in kinds
    hpa = kinds[("HorizontalPodAutoscaler", "gateway")]["spec"]["scaleTargetRef"]
    assert (hpa["kind"], hpa["name"]) == ("Deployment", "gateway")


def test_gateway_probes_use_grpc_health_on_the_grpc_port() -> None:
    gateway = next(s for name, s in pod_specs() if name.endswith("Deployment/gateway"))
    (container,) = gateway["containers"]
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port, probe


def test_every_container_has_requests_and_limits_and_the_roles_run_non_root() -> None:
    for name, spec in pod_specs():
        pod_user = spec.get("securityContext", {}).get("runAsUser")
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name} container {container['name']}"
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{where}: {part}"
            if role_of(container.get("command")):
                user = container.get("securityContext", {}).get("runAsUser", pod_user)
                assert user not in (None, 0), f"{where} runs a modelgate role as root"


def test_k8s_services_target_ports_that_containers_declare() -> None:
    ports_by_app: dict[str, set[object]] = {}
    for _, doc in k8s_resources():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            app = doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
            for c in doc["spec"]["template"]["spec"]["containers"]:
                for p in c.get("ports", []):
                    ports_by_app.setdefault(app, set()).update({p["name"], p["containerPort"]})
    for _, doc in k8s_resources():
        if doc["kind"] != "Service":
            continue
        app = doc["spec"]["selector"]["app.kubernetes.io/name"]
        for port in doc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports_by_app[app], f"service {doc['metadata']['name']}: {target}"


def test_compose_has_the_services_asked_for() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    images = {name: s.get("image", "") for name, s in services.items()}
    assert images["zookeeper"].startswith("zookeeper:")
    assert images["tfserving"].startswith("tensorflow/serving:")
    assert images["triton"].startswith("nvcr.io/nvidia/tritonserver:")
    assert images["prometheus"].startswith("prom/prometheus:")
    assert images["grafana"].startswith("grafana/grafana:")
    roles = {name: role_of(s.get("command")) for name, s in services.items()}
    assert sorted(n for n, r in roles.items() if r == "gateway") == ["gateway-1", "gateway-2"]
    assert sorted(n for n, r in roles.items() if r == "worker_agent") == [
        "worker-tfserving",
        "worker-triton",
    ]
    assert [n for n, r in roles.items() if r == "manager_api"] == ["manager"]
    backends = {
        n: services[n]["environment"]["MODELGATE_WORKER_BACKEND"]
        for n, r in roles.items()
        if r == "worker_agent"
    }
    assert backends == {"worker-tfserving": "tfserving", "worker-triton": "triton"}
    # Prometheus and Grafana get their files from deploy/.
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).exists(), f"{service}: {source}"


def test_compose_interpolated_variables_are_documented_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE_FILE.read_text()))
    documented = set(
        re.findall(r"^#?\s*([A-Z_]+)=", (DEPLOY / "compose" / "env.example").read_text(), re.M)
    )
    assert used <= documented, used - documented


def test_dockerfile_is_non_root_with_a_healthcheck_and_role_by_command() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim|^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^HEALTHCHECK .*CMD", text, re.M | re.S)
    healthcheck = re.search(r"^COPY (\S+) /usr/local/bin/modelgate-healthcheck", text, re.M)
    assert healthcheck and (REPO / healthcheck.group(1)).exists()
    # Files the build copies must not be excluded by .dockerignore.
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "deploy" not in ignored and ".run" in ignored and ".venv" in ignored


def test_no_secret_values_in_deploy_files() -> None:
    # Tokens only come from git-ignored files, Secrets or .env: never a literal value.
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix in (".yml", ".yaml", ".toml", ".example", ""):
            text = path.read_text(errors="replace")
            for match in re.finditer(r"(?i)^\s*token\s*=\s*\"([^\"]*)\"", text, re.M):
                assert match.group(1).startswith("REPLACE-"), f"{path}: {match.group(0)}"
            assert "mg-admin-" not in text, path


def test_example_overlay_builds_with_kustomize_and_the_output_validates(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with its built-in kustomize) is not installed; install kubectl")
    # The overlay's Secrets come from git-ignored files: build a copy with stand-ins.
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("tokens.toml", "internal-token.txt"))
    overlay = copy / "overlays" / "example"
    shutil.copy(overlay / "tokens.example.toml", overlay / "tokens.toml")
    (overlay / "internal-token.txt").write_text("stand-in-token")
    built = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    out_file = tmp_path / "built.yaml"
    out_file.write_text(built.stdout)
    docs = documents(out_file)
    result = subprocess.run(
        [_kubernetes_validate(), "--strict", str(out_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(docs), result.stdout

    by_key = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    secrets = {n for k, n in by_key if k == "Secret"}
    assert {s.rsplit("-", 1)[0] for s in secrets} == {
        "modelgate-tokens",
        "modelgate-internal-token",
    }
    for (kind, name), doc in by_key.items():
        if kind != "Namespace":
            assert doc["metadata"].get("namespace") == "modelgate", (kind, name)
    assert by_key[("Deployment", "gateway")]["spec"]["replicas"] == 3
    assert by_key[("HorizontalPodAutoscaler", "gateway")]["spec"]["minReplicas"] == 3
    for kind, name in (
        ("Deployment", "gateway"),
        ("Deployment", "manager"),
        ("StatefulSet", "worker-triton"),
    ):
        pod = by_key[(kind, name)]["spec"]["template"]
        assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "modelgate"  # scraping
        images = {c["image"] for c in pod["spec"]["containers"] if role_of(c.get("command"))}
        assert images == {"registry.example.com/modelgate:0.1.0"}, (name, images)
    # Secret references follow the generated (hashed) names.
    manager = by_key[("Deployment", "manager")]["spec"]["template"]["spec"]
    assert {v["secret"]["secretName"] for v in manager["volumes"] if "secret" in v} <= secrets


def test_dashboard_json_is_what_its_generator_writes() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dash", DEPLOY / "grafana" / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    on_disk = (DEPLOY / "grafana" / "dashboards" / "modelgate.json").read_text()
    assert on_disk == module.render(), "run: .venv/bin/python deploy/grafana/dashboard.py"


def test_gateways_run_haproxy_in_front_in_every_deployment() -> None:
    # The image carries HAProxy, and every gateway asks for the haproxy data plane
    # explicitly: an image without it must fail the start, not fall back silently.
    assert re.search(r"apt-get install[^\n]*\bhaproxy\b", DOCKERFILE.read_text())
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    gateways = [s for s in services.values() if role_of(s.get("command")) == "gateway"]
    assert gateways and all(
        s["environment"]["MODELGATE_GATEWAY_DATAPLANE"] == "haproxy" for s in gateways
    )
    containers = [
        c
        for _, spec in pod_specs()
        for c in spec["containers"]
        if role_of(c.get("command")) == "gateway"
    ]
    assert containers
    for container in containers:
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["MODELGATE_GATEWAY_DATAPLANE"] == "haproxy"
        # HAProxy's run directory (configuration, sockets) is under the writable /tmp
        assert "/tmp" in {m["mountPath"] for m in container.get("volumeMounts", ())}
