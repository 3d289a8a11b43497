"""registry.settings_cli: one flag per settings field for every role, secrets never on argv."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic_settings import BaseSettings

from gateway.settings import GatewaySettings
from manager_api.settings import ManagerSettings
from registry.settings_cli import build_parser, is_secret, parse_settings
from tests.servers.tfserving import REPO
from worker_agent.settings import WorkerSettings

ROLES: list[tuple[str, type[BaseSettings]]] = [
    ("gateway", GatewaySettings),
    ("worker_agent", WorkerSettings),
    ("manager_api", ManagerSettings),
]


@pytest.mark.parametrize(("module", "cls"), ROLES)
def test_help_lists_every_field_but_secrets_with_its_docstring(
    module: str, cls: type[BaseSettings]
) -> None:
    # NOTE: the real entry point, so a flag added by hand in __main__ could not hide here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    help_text = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=REPO, env={**env, "COLUMNS": "10000"}, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    prefix = cls.model_config["env_prefix"]
    for name, field in cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert field.description, f"{name} has no docstring"
        if is_secret(name):
            assert flag not in help_text.split()
            assert prefix + name.upper() in help_text
        else:
            assert flag in help_text, flag
            assert " ".join(field.description.split()) in " ".join(help_text.split()), name


@pytest.mark.parametrize(("module", "cls"), ROLES)
def test_duration_and_size_fields_say_their_unit(module: str, cls: type[BaseSettings]) -> None:
    checked = 0
    for name, field in cls.model_fields.items():
        doc = (field.description or "").lower()
        checked += "second" in doc or "in mib" in doc or "in bytes" in doc
        if field.annotation is float and ("second" in doc or "timeout" in name):
            assert name.endswith("_s"), f"{module}.{name} is a duration: end it in _s"
        if "in mib" in doc or "in bytes" in doc:
            assert name.endswith(("_mb", "_bytes")), f"{module}.{name} is a size: say its unit"
    assert checked >= 2, f"{module}: the docstrings no longer say units; check the rule"


def test_flags_override_the_environment_and_types_are_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELGATE_MANAGER_PORT", "9000")
    monkeypatch.setenv("MODELGATE_MANAGER_RECONCILE", "true")
    s = parse_settings(ManagerSettings, ["--no-reconcile", "--uri-schemes", "file", "s3"],
                       prog="t", description="t")  # fmt: skip
    assert (s.port, s.reconcile, s.uri_schemes) == (9000, False, ["file", "s3"])
    s = parse_settings(ManagerSettings, ["--port", "0", "--max-plugin-mb", "5", "--log-json"],
                       prog="t", description="t")  # fmt: skip
    assert (s.port, s.max_plugin_mb, s.log_json) == (0, 5, True)
    with pytest.raises(ValueError, match="port"):
        parse_settings(ManagerSettings, ["--port", "eighty"], prog="t", description="t")


def test_secret_fields_have_no_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_secret("blob_token") and is_secret("admin_password") and not is_secret("tokens_file")
    parser = build_parser(GatewaySettings, "python -m gateway", "test")
    with pytest.raises(SystemExit):
        parser.parse_args(["--blob-token", "s3cret"])
    monkeypatch.setenv("MODELGATE_GATEWAY_BLOB_TOKEN", "s3cret")
    assert parse_settings(GatewaySettings, [], prog="t", description="t").blob_token == "s3cret"
