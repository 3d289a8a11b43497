"""Surfaces end to end: official clients, protocol translation, errors, health, reflection,
Invoke (JSON codec and a third-party REST service), ListModels."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as kserve
from tritonclient.utils import InferenceServerException

from protos.modelgate.v1 import gateway_pb2, gateway_pb2_grpc
from protos.tfs.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    predict_pb2,
)
from registry import layout
from registry.records import Service
from tests.gateway.conftest import (
    ADD_ONE,
    DOUBLE_MODEL,
    RunningGateway,
    put_model,
    put_route,
)
from tests.servers.zk import wait_for

REPO = Path(__file__).resolve().parents[2]
TFS_CLIENT = REPO / "tests" / "gateway" / "clients" / "tfs_client.py"


def tfs_calls(address: str, calls: list[dict]) -> list[dict]:
    """Run the official TF-Serving client in a subprocess (it imports TensorFlow)."""
    out = subprocess.run(
        [sys.executable, str(TFS_CLIENT), address, json.dumps(calls)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_official_tfserving_client_predict_passthrough_and_translation(routed):
    results = tfs_calls(
        routed.address,
        [
            # TF-Serving Predict -> Triton-hosted model (translated), by label and by version
            {"model": ADD_ONE, "label": "canary", "inputs": {"INPUT0": [1.0, 2.0]}},
            {"model": ADD_ONE, "version": 1, "inputs": {"INPUT0": [1.0, 2.0]}},
            {"model": ADD_ONE, "inputs": {"INPUT0": [5.0]}},
            # TF-Serving Predict -> the TF-Serving double (passthrough)
            {"model": DOUBLE_MODEL, "inputs": {"x": [1.5, 3.0]}},
            {"model": DOUBLE_MODEL, "method": "GetModelMetadata"},
            {"model": ADD_ONE, "method": "GetModelMetadata", "version": 1},
            {"model": "nope", "inputs": {"x": [1.0]}},
            {"model": ADD_ONE, "label": "beta", "inputs": {"INPUT0": [1.0]}},
        ],
    )
    canary, v1, newest, dbl, meta, triton_meta, unknown, bad_label = results
    assert canary["code"] == "OK" and canary["outputs"]["OUTPUT0"] == [11.0, 12.0]
    assert canary["version"] == 2
    assert v1["outputs"]["OUTPUT0"] == [2.0, 3.0] and v1["version"] == 1
    assert newest["outputs"]["OUTPUT0"] == [15.0] and newest["version"] == 2
    assert dbl["code"] == "OK" and dbl["outputs"]["y"] == [3.0, 6.0]
    assert dbl["outputs"]["served_by"] == ["double-a"]
    assert meta["code"] == "OK" and meta["outputs"]["inputs"] == {"x": "float32"}
    # TF-Serving GetModelMetadata of a Triton model: translated from KServe metadata
    assert triton_meta["code"] == "OK" and triton_meta["version"] == 1
    assert triton_meta["outputs"] == {"inputs": {"INPUT0": "float32"},
                                      "outputs": {"OUTPUT0": "float32"}}  # fmt: skip
    assert unknown["code"] == "NOT_FOUND" and "'nope'" in unknown["details"]
    assert bad_label["code"] == "NOT_FOUND" and "'beta'" in bad_label["details"]


def test_kserve_infer_to_tfserving_double_is_translated(routed):
    client = triton_grpc.InferenceServerClient(routed.address)
    x = triton_grpc.InferInput("x", [3], "FP32")
    x.set_data_from_numpy(np.array([1.0, 2.0, 4.0], dtype=np.float32))
    result = client.infer(DOUBLE_MODEL, [x], client_timeout=20)
    np.testing.assert_array_equal(result.as_numpy("y"), [2.0, 4.0, 8.0])
    assert result.as_numpy("served_by").tolist() == [b"double-a"]
    assert result.get_response().model_version == "1"
    # typed contents (no raw) and an int64 tensor through the same path
    x64 = triton_grpc.InferInput("x", [2], "INT64")
    x64.set_data_from_numpy(np.array([3, 5], dtype=np.int64))
    out = triton_grpc.InferRequestedOutput("y")
    result = client.infer(DOUBLE_MODEL, [x64], outputs=[out], client_timeout=20)
    assert result.as_numpy("y").tolist() == [6, 10]
    assert result.as_numpy("served_by") is None  # only what was asked for
    metadata = client.get_model_metadata(DOUBLE_MODEL)  # translated from the SignatureDef
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("x", "FP32", [-1])]
    assert metadata.platform == "tensorflow_savedmodel" and metadata.versions == ["1"]
    client.close()


def test_kserve_passthrough_labels_stream_and_repository(routed):
    client = triton_grpc.InferenceServerClient(routed.address)
    x = triton_grpc.InferInput("INPUT0", [1], "FP32")
    x.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    assert client.infer(ADD_ONE, [x], model_version="stable").as_numpy("OUTPUT0")[0] == 2.0
    assert client.infer(ADD_ONE, [x], model_version="canary").as_numpy("OUTPUT0")[0] == 11.0
    assert client.infer(ADD_ONE, [x], model_version="1").as_numpy("OUTPUT0")[0] == 2.0
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(ADD_ONE) and not client.is_model_ready("empty")
    assert client.get_model_metadata(ADD_ONE, "2").name == ADD_ONE
    assert client.get_model_config(ADD_ONE).config.name == ADD_ONE
    index = {(m.name, m.version, m.state) for m in client.get_model_repository_index().models}
    assert (ADD_ONE, "2", "READY") in index and ("empty", "1", "UNAVAILABLE") in index
    with pytest.raises(InferenceServerException, match="manager"):
        client.load_model(ADD_ONE)
    with pytest.raises(InferenceServerException, match="manager"):
        client.unload_model(ADD_ONE)

    results: list = []
    done = threading.Event()

    def callback(result, error):
        results.append((result, error))
        if len(results) == 3:
            done.set()

    client.start_stream(callback)
    client.async_stream_infer(ADD_ONE, [x], model_version="1")
    client.async_stream_infer("nope", [x])
    client.async_stream_infer(ADD_ONE, [x], model_version="2")
    assert done.wait(30)
    client.stop_stream()
    ok = sorted(float(r.as_numpy("OUTPUT0")[0]) for r, e in results if e is None)
    errors = [str(e) for r, e in results if e is not None]
    assert ok == [2.0, 11.0] and len(errors) == 1 and "'nope'" in errors[0]
    client.close()


def test_errors_have_codes_and_actionable_messages(routed):
    def code_of(fn):
        try:
            fn()
        except InferenceServerException as err:
            return err.status(), err.message()
        return "OK", ""

    client = triton_grpc.InferenceServerClient(routed.address)
    x = triton_grpc.InferInput("INPUT0", [1], "FP32")
    x.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    status, message = code_of(lambda: client.infer("nope", [x]))
    assert status == "StatusCode.NOT_FOUND" and "'nope' is not known" in message
    status, message = code_of(lambda: client.infer("empty", [x]))
    assert status == "StatusCode.UNAVAILABLE" and "'empty' has no ready instance" in message
    status, message = code_of(lambda: client.infer(ADD_ONE, [x], model_version="9"))
    assert status == "StatusCode.NOT_FOUND" and "no version 9" in message
    status, message = code_of(lambda: client.infer(ADD_ONE, [x], model_version="beta"))
    assert status == "StatusCode.NOT_FOUND" and "labelled 'beta'" in message
    # an application error of the backend passes through with its code, no retry
    bad = triton_grpc.InferInput("WRONG", [1], "FP32")
    bad.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    status, message = code_of(lambda: client.infer(ADD_ONE, [bad]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "WRONG" in message
    client.close()

    with grpc.insecure_channel(routed.address) as channel:
        for method in (
            "/inference.GRPCInferenceService/ModelInfer",
            "/tensorflow.serving.PredictionService/Predict",
            "/modelgate.v1.Gateway/Invoke",
        ):
            raw = channel.unary_unary(method)
            with pytest.raises(grpc.RpcError) as err:
                raw(b"\xff\xff\xff\xff", timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "does not parse" in err.value.details()
    # the gateway is still fine
    client = triton_grpc.InferenceServerClient(routed.address)
    assert client.infer(ADD_ONE, [x]).as_numpy("OUTPUT0")[0] == 11.0
    assert (
        routed.metric(
            "modelgate_gateway_requests_total",
            {"model": "_unknown", "version": "", "surface": "kserve", "code": "NOT_FOUND"},
        )
        == 1
    )
    client.close()


def test_methods_a_backend_lacks_are_refused_with_what_to_call_instead(routed, registry):
    """Each (caller API, backend protocol) pair without a translation says what works."""
    registry.put(layout.service("svc"), Service(name="svc", urls=["http://127.0.0.1:1/x"]))
    wait_for(lambda: "svc" in routed.app.router.table.models, what="service in the table")

    def tfs(message, model):
        message.model_spec.name = model
        return message

    def multi(model):
        request = inference_pb2.MultiInferenceRequest()
        request.tasks.add().model_spec.name = model
        return request

    predictions = "/tensorflow.serving.PredictionService/"
    inference = "/inference.GRPCInferenceService/"
    calls = {
        "tfs": [
            (predictions + "Predict", lambda m: tfs(predict_pb2.PredictRequest(), m)),
            (predictions + "GetModelMetadata",
             lambda m: tfs(get_model_metadata_pb2.GetModelMetadataRequest(), m)),
            (predictions + "Classify",
             lambda m: tfs(classification_pb2.ClassificationRequest(), m)),
            (predictions + "MultiInference", multi),
        ],
        "kserve": [
            (inference + "ModelInfer", lambda m: kserve.ModelInferRequest(model_name=m)),
            (inference + "ModelMetadata", lambda m: kserve.ModelMetadataRequest(name=m)),
            (inference + "ModelConfig", lambda m: kserve.ModelConfigRequest(name=m)),
            (inference + "ModelStatistics", lambda m: kserve.ModelStatisticsRequest(name=m)),
        ],
    }  # fmt: skip

    def status(method, request):
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(method)(request.SerializeToString(), timeout=20)
        return err.value.code(), err.value.details()

    with grpc.insecure_channel(routed.address) as channel:
        for method, request in calls["tfs"] + calls["kserve"]:
            assert status(method, request("svc")) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "model 'svc' is a third-party REST service: call it with Invoke",
            ), method
        lacking = [
            (ADD_ONE, calls["tfs"][2:], "is served by Triton (KServe v2): {} is available for "
             "TF-Serving models only; use Predict or KServe ModelInfer"),
            (DOUBLE_MODEL, calls["kserve"][2:], "is served by TF-Serving: {} is available for "
             "KServe models only"),
        ]  # fmt: skip
        for model, methods, message in lacking:
            for method, request in methods:
                assert status(method, request(model)) == (
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"model {model!r} " + message.format(method.rsplit("/", 1)[1]),
                )


def test_message_over_the_limit_is_resource_exhausted(gateway_settings, registry, triton_a):
    put_model(registry, ADD_ONE)
    put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)
    small = RunningGateway(gateway_settings.model_copy(update={"max_message_bytes": 4096}))
    try:
        client = triton_grpc.InferenceServerClient(small.address)
        x = triton_grpc.InferInput("INPUT0", [4096], "FP32")
        x.set_data_from_numpy(np.zeros(4096, dtype=np.float32))
        with pytest.raises(InferenceServerException) as err:
            client.infer(ADD_ONE, [x])
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "4096" in err.value.message()
        y = triton_grpc.InferInput("INPUT0", [4], "FP32")
        y.set_data_from_numpy(np.zeros(4, dtype=np.float32))
        assert client.infer(ADD_ONE, [y]).as_numpy("OUTPUT0").tolist() == [1.0] * 4
        client.close()
    finally:
        small.stop()


def test_health_per_model_and_reflection(routed, registry):
    with grpc.insecure_channel(routed.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING

        def status(service):
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

        assert status("") == serving
        wait_for(lambda: status(f"model/{ADD_ONE}") == serving, what="model health")
        assert status("model/empty") == health_pb2.HealthCheckResponse.NOT_SERVING
        registry.delete(layout.route(DOUBLE_MODEL, 1, "worker-d"))
        wait_for(
            lambda: status(f"model/{DOUBLE_MODEL}") == health_pb2.HealthCheckResponse.NOT_SERVING,
            what="model health after its route is removed",
        )
        with pytest.raises(grpc.RpcError) as err:
            status("model/never-heard-of")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(
            refl.ServerReflectionInfo(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(list_services=""),
                        reflection_pb2.ServerReflectionRequest(
                            file_containing_symbol="tensorflow.serving.PredictionService"
                        ),
                    ]
                ),
                timeout=10,
            )
        )
        names = {s.name for s in responses[0].list_services_response.service}
        assert {
            "tensorflow.serving.PredictionService",
            "inference.GRPCInferenceService",
            "modelgate.v1.Gateway",
            "grpc.health.v1.Health",
        } <= names
        assert responses[1].file_descriptor_response.file_descriptor_proto

    status_code, body = routed.http_get("/healthz")
    health = json.loads(body)
    assert status_code == 200 and health["ok"] is True and health["status"] == "ok"
    assert health["models"] >= 1 and health["zookeeper"] == "connected"
    status_code, body = routed.http_get("/metrics")
    assert status_code == 200 and "modelgate_gateway_zk_connected 1.0" in body


class _Echo(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/fail":
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b"bad payload")
            return
        out = json.dumps({"echo": body.decode(), "ct": self.headers["content-type"]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def test_invoke_json_codec_rest_service_and_list_models(routed, registry):
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    port = http.server_address[1]
    # the first URL refuses connections: failover to the second
    registry.put(
        layout.service("echo"),
        Service(name="echo", urls=["http://127.0.0.1:1/x", f"http://127.0.0.1:{port}/x"]),
    )
    registry.put(
        layout.service("broken"), Service(name="broken", urls=[f"http://127.0.0.1:{port}/fail"])
    )
    wait_for(lambda: "broken" in routed.app.router.table.models, what="services in the table")
    try:
        with grpc.insecure_channel(routed.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            payload = json.dumps(
                {"inputs": [{"name": "INPUT0", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
            ).encode()
            response = stub.Invoke(
                gateway_pb2.InvokeRequest(
                    model=ADD_ONE,
                    version_label="stable",
                    payload=payload,
                    content_type="application/json",
                ),
                timeout=20,
            )
            doc = json.loads(response.payload)
            assert response.version == "1" and response.request_id
            assert doc["outputs"] == [
                {"name": "OUTPUT0", "shape": [2], "datatype": "FP32", "data": [2.0, 3.0]}
            ]
            response = stub.Invoke(
                gateway_pb2.InvokeRequest(
                    model=DOUBLE_MODEL,
                    payload=json.dumps(
                        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [4]}]}
                    ).encode(),
                ),
                timeout=20,
            )
            outputs = {o["name"]: o["data"] for o in json.loads(response.payload)["outputs"]}
            assert outputs == {"served_by": ["double-a"], "y": [8.0]}
            with pytest.raises(grpc.RpcError) as err:
                stub.Invoke(gateway_pb2.InvokeRequest(model=ADD_ONE, payload=b"{"), timeout=20)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            for _ in range(2):
                response = stub.Invoke(
                    gateway_pb2.InvokeRequest(
                        model="echo", payload=b"hello", content_type="text/plain"
                    ),
                    timeout=20,
                )
                assert json.loads(response.payload) == {"echo": "hello", "ct": "text/plain"}
            with pytest.raises(grpc.RpcError) as err:
                stub.Invoke(gateway_pb2.InvokeRequest(model="broken", payload=b"x"), timeout=20)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "HTTP 400" in err.value.details() and "bad payload" in err.value.details()

            models = {
                m.name: m
                for m in stub.ListModels(gateway_pb2.ListModelsRequest(), timeout=5).models
            }
            assert models[ADD_ONE].backend == "triton" and models[ADD_ONE].ready_instances == 2
            versions = {v.version: v for v in models[ADD_ONE].versions}
            assert versions["2"].weight == 100 and versions["1"].labels == ["stable"]
            assert models[DOUBLE_MODEL].backend == "tfserving"
            assert models["echo"].backend == "rest" and models["empty"].ready_instances == 0
    finally:
        http.shutdown()


def test_a_started_gateway_keeps_its_first_table_out_of_the_cyclic_gc(routed):
    # NOTE: a full collection walking every record of a large fleet stalls every call
    assert gc.get_freeze_count() > 0
