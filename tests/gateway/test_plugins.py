"""UDL plugins in the gateway, end to end: real ZooKeeper, real Triton, plugin packages.

Plugins are published as the manager does (a ``/plugins/<name>/<version>`` record naming a
package by sha256), with the package served from a ``file://`` URL.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from examples.digits import train
from examples.digits.images import render
from protos.modelgate.v1 import gateway_pb2, gateway_pb2_grpc
from protos.tfs.tensorflow.core.framework import tensor_pb2, types_pb2
from protos.tfs.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from registry import Registry, layout
from registry.records import Gateway, Plugin
from tests.examples.digits_helpers import DIGITS, serve_files
from tests.gateway.conftest import ADD_ONE, DOUBLE_MODEL, put_model, put_route, put_version
from tests.servers.zk import wait_for
from udl.package import pack

CSV_PLUGIN = '''
import time
import numpy as np
import udl


class Csv(udl.Plugin):
    """Invoke: "1,2,3" -> INPUT0 -> "tag:2,3,4". Tensor surfaces: x -> INPUT0 -> y."""

    def load(self, config):
        self.tag = config.get("tag", "")

    def preprocess(self, request):
        mode = request.parameters.get("mode")
        if mode == "invalid":
            raise udl.InvalidInput("send numbers separated by commas")
        if mode == "bug":
            raise ZeroDivisionError("secret-internal-detail")
        if mode == "slow":
            time.sleep(3)
        if request.payload:
            values = [float(v) for v in request.payload.decode().split(",")]
            request.tensors = {"INPUT0": np.asarray(values, np.float32)}
        else:
            request.tensors = {"INPUT0": request.tensors["x"].astype(np.float32)}
        return request

    def postprocess(self, response, request):
        out = response.tensors["OUTPUT0"]
        if request.payload:
            response.payload = (self.tag + ":" + ",".join(f"{v:g}" for v in out)).encode()
            response.content_type = "text/csv"
        else:
            response.tensors = {"y": out}
        return response
'''

ASYNC_CSV_PLUGIN = CSV_PLUGIN.replace("    def preprocess", "    async def preprocess").replace(
    "    def postprocess", "    async def postprocess"
)

BROKEN_PLUGIN = """
import udl


class Csv(udl.Plugin):
    def load(self, config):
        raise RuntimeError("weights file missing")
"""


def publish(
    registry: Registry,
    tmp_path: Path,
    name: str,
    version: str,
    source: str,
    executor: str = "thread",
    timeout_s: float = 5.0,
) -> str:
    """Write, pack and register a plugin package; return ``name@version``."""
    folder = tmp_path / f"src-{name}-{version}"
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text(
        f'name = "{name}"\nversion = "{version}"\nentrypoint = "csv_plugin:Csv"\n'
        f'executor = "{executor}"\ntimeout_s = {timeout_s}\n[timeouts]\nload = 30\n'
    )
    (folder / "csv_plugin.py").write_text(source)
    data = pack(folder)
    sha = hashlib.sha256(data).hexdigest()
    blob = tmp_path / f"{sha}.zip"
    blob.write_bytes(data)
    registry.put(layout.plugin(name, version), Plugin(
        name=name, version=version, sha256=sha, size=len(data),
        entrypoint="csv_plugin:Csv", blob_url=f"file://{blob}", executor=executor,
    ))  # fmt: skip
    return f"{name}@{version}"


def serve_add_one(registry: Registry, address: str, plugin: str | None, **config) -> None:
    put_model(registry, ADD_ONE, plugin=plugin, plugin_config=config)
    put_version(registry, ADD_ONE, 1)
    put_route(registry, ADD_ONE, 1, "w1", address)


def invoke(
    address: str,
    payload: bytes,
    model: str = ADD_ONE,
    content_type: str = "text/csv",
    timeout: float = 20,
    **params,
):
    with grpc.insecure_channel(address) as channel:
        return gateway_pb2_grpc.GatewayStub(channel).Invoke(
            gateway_pb2.InvokeRequest(model=model, payload=payload, content_type=content_type,
                                      parameters=params, request_id="req-7"),
            timeout=timeout,
        )  # fmt: skip


def invoke_error(address: str, payload: bytes, **params) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        invoke(address, payload, **params)
    return err.value


def gateway_record(registry: Registry) -> Gateway:
    return registry.get(layout.gateway("gw-test"), Gateway)[0]


@pytest.mark.parametrize(
    ("executor", "source"),
    [("thread", CSV_PLUGIN), ("async", ASYNC_CSV_PLUGIN), ("process", CSV_PLUGIN)],
)
def test_each_executor_transforms_invoke_end_to_end(
    gateway, registry, triton_a, tmp_path, executor, source
):
    key = publish(registry, tmp_path, "csv", "1", source, executor)
    serve_add_one(registry, triton_a.address, key, tag=executor)
    wait_for(lambda: gateway.instances(ADD_ONE) == 1, what="route in the gateway")
    answer = invoke(gateway.address, b"1,2,3")
    assert answer.payload == f"{executor}:2,3,4".encode()
    assert answer.content_type == "text/csv"
    assert (answer.model, answer.version, answer.request_id) == (ADD_ONE, "1", "req-7")
    assert gateway.metric("modelgate_gateway_plugin_seconds_count",
                          {"plugin": key, "stage": "preprocess"}) >= 1  # fmt: skip
    status = wait_for(lambda: gateway_record(registry).plugins.get(ADD_ONE), what="status")
    assert status.serving == key and status.error is None


PREPROCESS_ONLY_PLUGIN = """
import numpy as np
import udl


class Csv(udl.Plugin):
    def preprocess(self, request):
        values = [float(v) for v in request.payload.decode().split(",")]
        request.tensors = {"INPUT0": np.asarray(values, np.float32)}
        return request
"""


@pytest.mark.parametrize("executor", ["async", "process"])
def test_a_hook_the_plugin_does_not_override_is_skipped(
    gateway, registry, triton_a, tmp_path, executor
):
    key = publish(registry, tmp_path, "pre", "1", PREPROCESS_ONLY_PLUGIN, executor)
    serve_add_one(registry, triton_a.address, key)
    wait_for(lambda: gateway.instances(ADD_ONE) == 1, what="route in the gateway")
    answer = invoke(gateway.address, b"1,2")
    # no postprocess: the output tensors come back in the JSON codec
    outputs = {o["name"]: o["data"] for o in json.loads(answer.payload)["outputs"]}
    assert outputs == {"OUTPUT0": [2.0, 3.0]}
    seconds = "modelgate_gateway_plugin_seconds_count"
    assert gateway.metric(seconds, {"plugin": key, "stage": "preprocess"}) == 1
    assert gateway.metric(seconds, {"plugin": key, "stage": "postprocess"}) == 0


def test_plugin_runs_on_kserve_and_tfserving_surfaces(gateway, registry, triton_a, tmp_path):
    serve_add_one(registry, triton_a.address, publish(registry, tmp_path, "csv", "1", CSV_PLUGIN))
    wait_for(lambda: gateway.instances(ADD_ONE) == 1, what="route in the gateway")
    client = triton_grpc.InferenceServerClient(gateway.address)
    x = triton_grpc.InferInput("x", [3], "FP32")
    x.set_data_from_numpy(np.array([1, 2, 3], np.float32))
    result = client.infer(ADD_ONE, [x], client_timeout=20)
    np.testing.assert_array_equal(result.as_numpy("y"), [2, 3, 4])
    client.close()

    request = predict_pb2.PredictRequest()
    request.model_spec.name = ADD_ONE
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[5, 6]))
    request.inputs["x"].tensor_shape.dim.add(size=2)
    with grpc.insecure_channel(gateway.address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=20
        )
    assert np.frombuffer(response.outputs["y"].tensor_content, np.float32).tolist() == [6, 7]
    assert response.model_spec.version.value == 1


def test_plugin_errors_map_to_codes_and_other_models_keep_serving(
    gateway, registry, triton_a, tfs_double, tmp_path
):
    serve_add_one(registry, triton_a.address,
                  publish(registry, tmp_path, "csv", "1", CSV_PLUGIN, timeout_s=1.0))  # fmt: skip
    put_model(registry, DOUBLE_MODEL, backend="tfserving")
    put_version(registry, DOUBLE_MODEL, 1)
    put_route(registry, DOUBLE_MODEL, 1, "d1", tfs_double.address, protocol="tfserving")
    wait_for(lambda: gateway.instances(ADD_ONE) == 1 and gateway.instances(DOUBLE_MODEL) == 1,
             what="both models routable")  # fmt: skip

    err = invoke_error(gateway.address, b"x", mode="invalid")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "send numbers separated by commas (plugin csv@1 preprocess, request req-7)" in err.details()
    )

    err = invoke_error(gateway.address, b"1", mode="bug")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "plugin csv@1 preprocess failed (request req-7)"
    assert "secret-internal-detail" not in err.details()

    err = invoke_error(gateway.address, b"1", mode="slow")
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "plugin csv@1 preprocess exceeded its 1s timeout (request req-7)" in err.details()

    assert gateway.metric("modelgate_gateway_plugin_errors_total",
                          {"plugin": "csv@1", "stage": "preprocess", "code": "INTERNAL"}) == 1  # fmt: skip
    # The same model and the other model still answer.
    assert invoke(gateway.address, b"1").payload == b":2"
    payload = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [4]}]})
    answer = invoke(
        gateway.address, payload.encode(), model=DOUBLE_MODEL, content_type="application/json"
    )
    outputs = {o["name"]: o["data"] for o in json.loads(answer.payload)["outputs"]}
    assert outputs["y"] == [8.0]


def test_broken_version_keeps_the_old_one_then_a_good_one_swaps_under_load(
    gateway, registry, triton_a, tmp_path
):
    good = publish(registry, tmp_path, "csv", "1", CSV_PLUGIN)
    serve_add_one(registry, triton_a.address, good, tag="v1")
    wait_for(lambda: gateway.instances(ADD_ONE) == 1, what="route in the gateway")
    assert invoke(gateway.address, b"1").payload == b"v1:2"

    broken = publish(registry, tmp_path, "csv", "2", BROKEN_PLUGIN)
    put_model(registry, ADD_ONE, plugin=broken, plugin_config={"tag": "v2"})
    status = wait_for(lambda: (s := gateway_record(registry).plugins.get(ADD_ONE)) and s.error and s,
                      what="the load error in the gateway record")  # fmt: skip
    assert "csv@2 failed to load: RuntimeError: weights file missing" in status.error
    assert status.serving == "csv@1"
    assert invoke(gateway.address, b"1").payload == b"v1:2"

    # A steady stream of calls while a good version replaces the serving one.
    answers: list[bytes] = []
    failures: list[Exception] = []
    stop = threading.Event()

    def stream() -> None:
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            while not stop.is_set() and len(answers) < 2000:
                try:
                    answers.append(
                        stub.Invoke(
                            gateway_pb2.InvokeRequest(
                                model=ADD_ONE, payload=b"1", content_type="text/csv"
                            ),
                            timeout=20,
                        ).payload
                    )
                except grpc.RpcError as err:  # fmt: skip
                    failures.append(err)

    caller = threading.Thread(target=stream)
    caller.start()
    try:
        wait_for(lambda: len(answers) >= 20, what="calls flowing")
        put_model(registry, ADD_ONE, plugin=publish(registry, tmp_path, "csv", "3", CSV_PLUGIN),
                  plugin_config={"tag": "v3"})  # fmt: skip
        wait_for(lambda: answers[-1:] == [b"v3:2"], what="calls answered by csv@3")
        seen = len(answers)
        wait_for(lambda: len(answers) >= seen + 20, what="more calls after the swap")
    finally:
        stop.set()
        caller.join(30)
    assert failures == []
    assert set(answers) == {b"v1:2", b"v3:2"}
    status = wait_for(lambda: (s := gateway_record(registry).plugins[ADD_ONE]).serving == "csv@3" and s,
                      what="csv@3 in the gateway record")  # fmt: skip
    assert status.error is None


def test_a_process_plugin_that_fails_to_load_reports_its_own_error(
    gateway, registry, triton_a, tmp_path
):
    broken = publish(registry, tmp_path, "csv", "1", BROKEN_PLUGIN, "process")
    serve_add_one(registry, triton_a.address, broken)
    wait_for(lambda: gateway.instances(ADD_ONE) == 1, what="route in the gateway")
    status = wait_for(lambda: (s := gateway_record(registry).plugins.get(ADD_ONE)) and s.error and s,
                      what="the load error in the gateway record")  # fmt: skip
    assert status.error == "plugin csv@1 failed to load: RuntimeError: weights file missing"
    assert status.serving is None
    err = invoke_error(gateway.address, b"1")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "csv@1 failed to load: RuntimeError: weights file missing" in err.details()


def test_unregistered_plugin_is_a_clear_error(gateway, registry, triton_a):
    serve_add_one(registry, triton_a.address, "nosuch@1")
    wait_for(lambda: gateway.instances(ADD_ONE) == 1, what="route in the gateway")
    err = invoke_error(gateway.address, b"1")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "plugin nosuch@1 is not loaded: plugin nosuch@1 is not registered" in err.details()


# -- the digits example through the gateway --------------------------------------------------


@pytest.fixture(scope="module")
def digits_split():
    return train.split()


@pytest.fixture(scope="module")
def digits_on_triton(triton_a, digits_split):
    x_train, _, y_train, _ = digits_split
    train.write_model(triton_a.model_repository, train.train(x_train, y_train), name="digits_gw")
    client = triton_grpc.InferenceServerClient(triton_a.address)
    client.load_model("digits_gw")
    client.close()
    return triton_a


def test_digits_through_the_gateway_by_bytes_and_by_url(
    gateway, registry, digits_on_triton, digits_split, tmp_path
):
    data = pack(DIGITS / "plugin")
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "digits.zip").write_bytes(data)
    registry.put(layout.plugin("digits", "1.0.0"), Plugin(
        name="digits", version="1.0.0", sha256=sha, size=len(data),
        entrypoint="digits_plugin:DigitsPlugin", blob_url=f"file://{tmp_path / 'digits.zip'}",
        executor="process"))  # fmt: skip
    put_model(registry, "digits_gw", plugin="digits@1.0.0")
    put_version(registry, "digits_gw", 1)
    put_route(registry, "digits_gw", 1, "w1", digits_on_triton.address)
    wait_for(lambda: gateway.instances("digits_gw") == 1, what="digits route")

    _, x_test, _, y_test = digits_split
    www = tmp_path / "www"
    www.mkdir()
    correct = {"bytes": 0, "url": 0}
    with grpc.insecure_channel(gateway.address) as channel, serve_files(www) as base:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        for i, (pixels, label) in enumerate(zip(x_test, y_test, strict=True)):
            answer = stub.Invoke(
                gateway_pb2.InvokeRequest(
                    model="digits_gw", payload=render(pixels), content_type="image/png"
                ),
                timeout=30,
            )
            assert answer.content_type == "application/json"
            correct["bytes"] += json.loads(answer.payload)["digit"] == label
            if i % 9 == 0:  # every 9th image also by URL (50 of 450)
                (www / f"{i}.jpg").write_bytes(render(pixels, "JPEG", scale=8))
                answer = stub.Invoke(gateway_pb2.InvokeRequest(
                    model="digits_gw", payload=f"{base}/{i}.jpg".encode(),
                    content_type="text/uri-list"), timeout=30)  # fmt: skip
                correct["url"] += json.loads(answer.payload)["digit"] == label
        with pytest.raises(grpc.RpcError) as err:
            stub.Invoke(gateway_pb2.InvokeRequest(model="digits_gw", payload=b"not an image",
                                                  content_type="image/png"), timeout=30)  # fmt: skip
    assert correct["bytes"] / len(y_test) >= 0.90
    assert correct["url"] / 50 >= 0.90
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a readable image" in err.value.details()
