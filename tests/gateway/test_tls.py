"""The gRPC port serves TLS when --tls-cert/--tls-key are set."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest
from tritonclient.grpc import service_pb2 as kserve

from tests.gateway.conftest import RunningGateway

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def test_tls_port(gateway_settings, registry, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    gw = RunningGateway(
        gateway_settings.model_copy(update={"tls_cert": str(cert), "tls_key": str(key)})
    )
    try:
        method = "/inference.GRPCInferenceService/ServerLive"
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{gw.app.port}", creds) as channel:
            raw = channel.unary_unary(method)(
                kserve.ServerLiveRequest().SerializeToString(), timeout=10
            )
            assert kserve.ServerLiveResponse.FromString(raw).live
        with grpc.insecure_channel(f"localhost:{gw.app.port}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary(method)(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        gw.stop()
