"""The gRPC port serves TLS when --tls-cert/--tls-key are set."""

from __future__ import annotations

import grpc
import pytest
from tritonclient.grpc import service_pb2 as kserve

from tests.gateway.conftest import RunningGateway
from tests.servers.tls import self_signed


def test_tls_port(gateway_settings, registry, tmp_path):
    cert, key = self_signed(tmp_path)
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
