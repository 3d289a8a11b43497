"""Deadlines reach the backend; graceful shutdown finishes in-flight calls."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2 as kserve
from tritonclient.utils import InferenceServerException

from registry import layout
from tests.gateway.conftest import RunningGateway, put_model, put_route
from tests.servers.zk import wait_for

SLOW = "slow_gw"
SLOW_CONFIG = f"""\
name: "{SLOW}"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 2 }} ]
"""
#: Sleeps INPUT0[0] seconds, then echoes the input.
SLOW_MODEL = """\
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            time.sleep(float(x[0]))
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return out
"""


@pytest.fixture(scope="module")
def slow_triton(triton):
    model_dir = triton.model_repository / SLOW
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(SLOW_CONFIG)
    (model_dir / "1" / "model.py").write_text(SLOW_MODEL)
    client = triton_grpc.InferenceServerClient(triton.address)
    client.load_model(SLOW)
    client.close()
    return triton


def sleep_input(seconds: float) -> triton_grpc.InferInput:
    x = triton_grpc.InferInput("INPUT0", [1], "FP32")
    x.set_data_from_numpy(np.array([seconds], dtype=np.float32))
    return x


class RecordingBackend:
    """A KServe backend that records the deadline each call arrives with."""

    def __init__(self) -> None:
        self.remaining: list[float | None] = []

        def infer(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.remaining.append(context.time_remaining())
            return kserve.ModelInferResponse(model_name="rec").SerializeToString()

        handler = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService",
            {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        self.server.add_generic_rpc_handlers((handler,))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()


def test_caller_deadline_reaches_the_backend(registry, gateway):
    backend = RecordingBackend()
    try:
        put_model(registry, "rec")
        put_route(registry, "rec", 1, "worker-r", backend.address)
        wait_for(lambda: gateway.instances("rec") == 1, what="route")
        with grpc.insecure_channel(gateway.address) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            request = kserve.ModelInferRequest(model_name="rec").SerializeToString()
            call(request, timeout=3)
            call(request)  # no deadline: the gateway's default (20 s in these tests)
        short, default = backend.remaining
        assert short is not None and 0 < short <= 3
        assert default is not None and 3 < default <= 20.5  # gRPC rounds timeouts up
    finally:
        backend.server.stop(None)


def test_deadline_exceeded_is_not_retried(registry, gateway, slow_triton):
    put_model(registry, SLOW)
    put_route(registry, SLOW, 1, "worker-a", slow_triton.address)
    put_route(registry, SLOW, 1, "worker-a2", slow_triton.address.replace("127.0.0.1", "localhost"))
    wait_for(lambda: gateway.instances(SLOW) == 2, what="routes")
    client = triton_grpc.InferenceServerClient(gateway.address)
    with pytest.raises(InferenceServerException) as err:
        client.infer(SLOW, [sleep_input(1.0)], client_timeout=0.3)
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    wait_for(
        lambda: (
            gateway.metric(
                "modelgate_gateway_requests_total",
                {"model": SLOW, "version": "1", "surface": "kserve", "code": "DEADLINE_EXCEEDED"},
            )
            == 1
        ),
        what="the gateway to count the DEADLINE_EXCEEDED",
    )
    assert gateway.metric("modelgate_gateway_retries_total", {"model": SLOW}) == 0
    client.close()


def test_graceful_shutdown_finishes_in_flight_calls(gateway_settings, registry, slow_triton):
    put_model(registry, SLOW)
    put_route(registry, SLOW, 1, "worker-a", slow_triton.address)
    # NOTE: a grace longer than any wait below: stop can only return early by seeing the
    # in-flight call finish, never by waiting the grace out.
    gw = RunningGateway(gateway_settings.model_copy(update={"grace_s": 3600}))
    wait_for(lambda: gw.instances(SLOW) == 1, what="route")
    assert registry.exists(layout.gateway("gw-test"))
    outcome: dict[str, object] = {}

    def slow_call() -> None:
        client = triton_grpc.InferenceServerClient(gw.address)
        try:
            result = client.infer(SLOW, [sleep_input(1.5)], client_timeout=20)
            outcome["value"] = float(result.as_numpy("OUTPUT0")[0])
        except Exception as err:
            outcome["error"] = err
        finally:
            client.close()

    thread = threading.Thread(target=slow_call)
    thread.start()
    wait_for(lambda: gw.metric("modelgate_gateway_in_flight", {"surface": "kserve"}) == 1,
             what="the call in flight")  # fmt: skip
    stopper = threading.Thread(target=gw.stop)
    stopper.start()
    wait_for(
        lambda: gw.app.health._server_status.get("") == health_pb2.HealthCheckResponse.NOT_SERVING,
        what="health NOT_SERVING while draining",
    )
    thread.join(30)
    stopper.join(60)
    assert outcome == {"value": 1.5}
    assert not stopper.is_alive(), "stop waited out the grace instead of the in-flight call"
    assert not registry.exists(layout.gateway("gw-test"))
