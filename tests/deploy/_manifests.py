"""Helpers shared by the deploy tests: the files under deploy/ and their YAML documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
ROLES = ("gateway", "worker_agent", "manager_api")


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def k8s_manifests() -> list[Path]:
    """Kubernetes resources (kustomization files are kustomize's, not the API server's)."""
    return [p for p in sorted(K8S.rglob("*.yaml")) if p.name != "kustomization.yaml"]


def documents(path: Path) -> list[Any]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_resources() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in k8s_manifests():
        for doc in documents(path):
            yield path, doc


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(``<file>:<kind>/<name>``, pod spec) of every workload in the k8s manifests."""
    for path, doc in k8s_resources():
        spec = doc.get("spec", {})
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", spec["template"]["spec"]


def role_of(command: list[str] | str | None) -> str | None:
    """The modelgate role a container runs (``python -m <role>``), or None."""
    if isinstance(command, str):
        command = command.split()
    command = list(command or [])
    if "-m" in command and command.index("-m") + 1 < len(command):
        module = command[command.index("-m") + 1]
        return module if module in ROLES else f"unknown module {module}"
    return None
