"""The manager serves HTTPS when --tls-cert/--tls-key are set (settings, not code)."""

from __future__ import annotations

import sys

import httpx
import pytest

from deploy.local.runner import Process
from tests.manager_api.conftest import TOKENS, TOKENS_TOML
from tests.servers.tls import self_signed
from tests.servers.zk import wait_for


def _manager(zookeeper, zk_root, tmp_path, *extra: str) -> Process:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS_TOML)
    cmd = [sys.executable, "-m", "manager_api", "--zk", zookeeper.hosts, "--root", zk_root,
           "--host", "127.0.0.1", "--port", "0", "--blob-dir", str(tmp_path / "blobs"),
           "--tokens-file", str(tokens), *extra]  # fmt: skip
    return Process("manager", cmd, log=tmp_path / "manager.log").start()


def test_https_with_a_certificate_from_settings(zookeeper, zk_root, tmp_path):
    cert, key = self_signed(tmp_path)
    proc = _manager(zookeeper, zk_root, tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        port = proc.wait_ready(timeout=60)["ports"]["http"]
        url = f"https://localhost:{port}"

        def healthy() -> httpx.Response | None:
            try:
                return httpx.get(f"{url}/healthz", verify=str(cert), timeout=5)
            except httpx.TransportError:
                return None

        assert wait_for(healthy, timeout=60, what="HTTPS /healthz").status_code == 200
        workers = httpx.get(f"{url}/v1/workers", verify=str(cert), timeout=5,
                            headers={"Authorization": f"Bearer {TOKENS['viewer']}"})  # fmt: skip
        assert workers.status_code == 200
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served
            httpx.get(f"http://localhost:{port}/healthz", timeout=5)
    finally:
        proc.stop()


def test_certificate_without_key_is_refused(zookeeper, zk_root, tmp_path):
    cert, _ = self_signed(tmp_path)
    proc = _manager(zookeeper, zk_root, tmp_path, "--tls-cert", str(cert))
    assert proc.popen is not None
    assert proc.popen.wait(timeout=60) == 2
    assert "set both tls_cert and tls_key, or neither" in proc.log.read_text()
