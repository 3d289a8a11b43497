"""The manager serves HTTPS when --tls-cert/--tls-key are set (settings, not code)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from registry.netutil import listening_ports, terminate
from tests.manager_api.conftest import TOKENS, TOKENS_TOML
from tests.servers.tls import self_signed
from tests.servers.zk import wait_for


def _manager(zookeeper, zk_root, tmp_path, *extra: str) -> subprocess.Popen[bytes]:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS_TOML)
    return subprocess.Popen(
        [sys.executable, "-m", "manager_api", "--zk", zookeeper.hosts, "--root", zk_root,
         "--host", "127.0.0.1", "--port", "0", "--blob-dir", str(tmp_path / "blobs"),
         "--tokens-file", str(tokens), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_https_with_a_certificate_from_settings(zookeeper, zk_root, tmp_path):
    cert, key = self_signed(tmp_path)
    proc = _manager(zookeeper, zk_root, tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        (port,) = wait_for(lambda: listening_ports(proc.pid), timeout=60, what="the manager port")
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
        terminate(proc)


def test_certificate_without_key_is_refused(zookeeper, zk_root, tmp_path):
    cert, _ = self_signed(tmp_path)
    proc = _manager(zookeeper, zk_root, tmp_path, "--tls-cert", str(cert))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert b"set both tls_cert and tls_key, or neither" in err
