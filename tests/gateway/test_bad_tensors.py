"""Bad tensors: every decoder answers INVALID_ARGUMENT saying what is wrong, never another
error (a seeded fuzz of mutated valid payloads), each surface of a real gateway does too, and
a plugin's tensor that is not a numpy array is named as the plugin's fault."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2 as kserve

import udl
from gateway import codec, translate
from gateway.backends.wire import parse
from gateway.flow import PluginFlow
from gateway.metrics import GatewayMetrics
from gateway.surfaces.partial import KServeRequest, TfsMultiRequest, TfsRequest
from protos.modelgate.v1 import gateway_pb2, gateway_pb2_grpc
from protos.tfs.tensorflow.core.framework import tensor_pb2, types_pb2
from protos.tfs.tensorflow.core.protobuf import meta_graph_pb2
from protos.tfs.tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2
from registry.errors import InvalidArgumentError
from tests.gateway.conftest import ADD_ONE, DOUBLE_MODEL, raw_status
from udl.loader import LoadedPlugin, PluginFailedError
from udl.package import PluginManifest

SEED = 13
#: Mutated payloads per decoder.
ROUNDS = 3000

DATATYPES = [*codec.SUPPORTED_DATATYPES, "BF16", "fp32", "", "X" * 200]
TF_DTYPES = [*codec.TF_DTYPES, types_pb2.DT_COMPLEX64, types_pb2.DT_BFLOAT16, 0, 999]
#: Values that have broken decoders: out of range, of the wrong kind, huge, nested.
VALUES: list[Any] = [
    0, 1, -1, 127, 128, 255, 256, 65504, 65520, 2**31 - 1, 2**31, -(2**31) - 1, 2**32,
    2**40, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 2**1100, 1.7, -0.5, 1e39, 1e300,
    float("inf"), float("nan"), True, False, None, "", "a", "x" * 300, [], [1], [[1, 2], [3]],
    {}, {"a": 1},
]  # fmt: skip
TF_VALUE_FIELDS = sorted(
    f.name
    for f in tensor_pb2.TensorProto.DESCRIPTOR.fields
    if f.name.endswith("_val") and f.name != "resource_handle_val"
)
DIMS = [0, 1, 2, 3, -1, -(2**63), 2**31, 2**62, 2**63 - 1]


def only_invalid_argument(what: str, decode: Callable[..., object], *args: Any) -> None:
    """``decode(*args)`` returns, or raises InvalidArgumentError with a short message."""
    try:
        decode(*args)
    except InvalidArgumentError as err:
        assert str(err), what
        assert len(str(err)) < 600, (what, str(err)[:200])
    except Exception as err:  # the assertion under test: no other error escapes
        pytest.fail(f"{what}: {type(err).__name__}: {str(err)[:300]}")


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:
            del out[at : at + rng.randint(1, 8)]
        else:
            out = out[:at]
    return bytes(out)


def shape(rng: random.Random) -> list[int]:
    if rng.random() < 0.1:
        return [1] * rng.choice([33, 40])
    return [rng.choice(DIMS) for _ in range(rng.randint(0, 4))]


# -- valid payloads and their structured mutations ----------------------------------------


def infer_request(rng: random.Random) -> kserve.ModelInferRequest:
    request = kserve.ModelInferRequest(model_name="m")
    words = np.array([b"x", b""], dtype=object)
    codec.add_kserve_inputs(
        request, [("a", np.arange(6, dtype=np.float32).reshape(2, 3)), ("b", words)]
    )
    if rng.random() < 0.5:  # typed contents instead of raw
        del request.raw_input_contents[:]
        request.inputs[0].contents.fp32_contents.extend(range(6))
        request.inputs[1].contents.bytes_contents.extend([b"x", b""])
    for _ in range(rng.randint(1, 3)):
        tensor = rng.choice(request.inputs)
        op = rng.randrange(7)
        if op == 0:
            tensor.datatype = rng.choice(DATATYPES)
        elif op == 1:
            del tensor.shape[:]
            tensor.shape.extend(shape(rng))
        elif op == 2 and request.raw_input_contents:
            i = rng.randrange(len(request.raw_input_contents))
            request.raw_input_contents[i] = mutate_bytes(rng, request.raw_input_contents[i])
        elif op == 3:
            request.raw_input_contents.append(b"\x01\x00\x00")
        elif op == 4:
            field = rng.choice(sorted(set(codec._KSERVE_FIELDS.values())))
            values = getattr(tensor.contents, field)
            if field == "bytes_contents":
                values.append(b"y")
            elif field == "bool_contents":
                values.append(True)
            elif field.startswith("fp"):
                values.append(rng.choice([1.5, 1e38]))
            else:
                values.append(rng.choice([0, 7, 255, 2**15, 2**31 - 1]))
        elif op == 5:
            request.inputs.add().CopyFrom(tensor)  # the same name twice
        else:
            tensor.name = rng.choice(["", "n" * 300, "a"])
    return request


def tensor_proto(rng: random.Random) -> tensor_pb2.TensorProto:
    tensor = codec.array_to_tf("t", np.arange(4, dtype=np.int32).reshape(2, 2))
    if rng.random() < 0.5:  # typed values instead of tensor_content
        tensor.tensor_content = b""
        tensor.int_val.extend(range(4))
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        if op == 0:
            tensor.dtype = rng.choice(TF_DTYPES)
        elif op == 1:
            del tensor.tensor_shape.dim[:]
            for d in shape(rng):
                tensor.tensor_shape.dim.add(size=d)
        elif op == 2:
            tensor.tensor_content = mutate_bytes(rng, tensor.tensor_content or b"\x00" * 4)
        elif op == 3 and rng.random() < 0.3:
            tensor.tensor_shape.unknown_rank = True
        elif op == 4:
            field = rng.choice(TF_VALUE_FIELDS)
            if field in ("string_val",):
                getattr(tensor, field).append(b"s")
            elif field == "bool_val":
                tensor.bool_val.append(True)
            elif field in ("scomplex_val", "dcomplex_val", "float_val", "double_val"):
                getattr(tensor, field).append(1.5)
            elif field == "variant_val":
                tensor.variant_val.add(type_name="x")
            elif field == "float8_val":
                tensor.float8_val = b"\x01"
            else:
                getattr(tensor, field).append(rng.choice([0, 65535, 2**16, 2**31 - 1]))
        else:
            tensor.int_val.append(rng.choice([-129, 128, 256, -1, 2**31 - 1]))
    return tensor


def predict_request(rng: random.Random) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["t"].CopyFrom(tensor_proto(rng))
    return request


def json_payload(rng: random.Random) -> bytes:
    inputs: list[Any] = [
        {"name": "a", "shape": [2], "datatype": "INT32", "data": [1, 2]},
        {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["hi"]},
    ]
    for _ in range(rng.randint(1, 3)):
        item = rng.choice(inputs)
        key = rng.choice(["name", "shape", "datatype", "data", "data", "data"])
        if key == "datatype":
            item[key] = rng.choice([*DATATYPES, 5, None])
        elif key == "shape":
            item[key] = rng.choice([shape(rng), [1.5], "2", None, [True]])
        elif key == "data":
            item[key] = [rng.choice(VALUES) for _ in range(rng.randint(0, 3))]
        elif rng.random() < 0.3:
            item.pop(key, None)
        else:
            item[key] = rng.choice(["a", "b", 7, None])
    doc: Any = {"inputs": inputs}
    if rng.random() < 0.05:
        doc = rng.choice([[], {"inputs": {}}, {"inputs": [1]}, 5, "x"])
    text = json.dumps(doc).encode()
    if rng.random() < 0.3:
        text = mutate_bytes(rng, text)
    return text


def metadata_responses(rng: random.Random) -> tuple[bytes, bytes]:
    sig = meta_graph_pb2.SignatureDef()
    sig.inputs["x"].dtype = rng.choice(TF_DTYPES)
    sig.inputs["x"].tensor_shape.unknown_rank = rng.random() < 0.3
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    sigmap.signature_def[rng.choice(["serving_default", "other"])].CopyFrom(sig)
    tf = get_model_metadata_pb2.GetModelMetadataResponse()
    tf.metadata["signature_def"].Pack(sigmap)
    if rng.random() < 0.3:
        tf.metadata["signature_def"].value = mutate_bytes(rng, tf.metadata["signature_def"].value)
    ks = kserve.ModelMetadataResponse(name="m")
    ks.inputs.add(name="x", datatype=rng.choice(DATATYPES), shape=shape(rng))
    return tf.SerializeToString(), ks.SerializeToString()


def test_decoders_raise_only_invalid_argument_on_mutated_payloads():
    rng = random.Random(SEED)
    for i in range(ROUNDS):
        request = infer_request(rng)
        body = request.SerializeToString()
        if rng.random() < 0.2:
            body = mutate_bytes(rng, body)
        only_invalid_argument(f"infer {i}", translate.infer_to_predict, body, "m", 1)
        response = kserve.ModelInferResponse(model_name="m")
        for tensor in request.inputs:
            output = response.outputs.add(name=tensor.name, datatype=tensor.datatype)
            output.shape.extend(tensor.shape)
            if tensor.HasField("contents"):
                output.contents.CopyFrom(tensor.contents)
        response.raw_output_contents.extend(request.raw_input_contents)
        only_invalid_argument(
            f"infer response {i}",
            translate.infer_response_to_predict,
            response.SerializeToString(),
            "m",
            1,
            "",
        )

        predict = predict_request(rng).SerializeToString()
        if rng.random() < 0.2:
            predict = mutate_bytes(rng, predict)
        only_invalid_argument(f"predict {i}", translate.predict_to_infer, predict, "m", 1)
        answer = predict_pb2.PredictResponse()
        answer.outputs["t"].CopyFrom(tensor_proto(rng))
        only_invalid_argument(
            f"predict response {i}",
            translate.predict_response_to_infer,
            answer.SerializeToString(),
            "m",
            1,
            [],
            "id",
        )

        payload = json_payload(rng)
        only_invalid_argument(f"json {i}: {payload[:300]!r}", codec.json_to_tensors, payload)

        tf_meta, kserve_meta = metadata_responses(rng)
        only_invalid_argument(f"tf meta {i}", translate.tf_metadata_to_kserve, tf_meta, "m", 1)
        only_invalid_argument(
            f"kserve meta {i}", translate.kserve_metadata_to_tf, kserve_meta, "m", 1
        )
        for cls in (KServeRequest, TfsRequest, TfsMultiRequest):
            only_invalid_argument(
                f"partial {i}", parse, cls, mutate_bytes(rng, predict + body), cls.__name__
            )


class ListTensors(udl.Plugin):
    """Produces a plain list as a tensor: a plugin bug the gateway must name."""

    async def preprocess(self, request: udl.Request) -> udl.Request:
        request.tensors = {"INPUT0": [1, 2, 3]}  # type: ignore[dict-item]
        return request


async def test_a_plugin_tensor_that_is_not_a_numpy_array_is_named(tmp_path):
    manifest = PluginManifest(name="lists", version="1", entrypoint="m:ListTensors")
    with ThreadPoolExecutor(1) as pool:
        plugin = LoadedPlugin(manifest, "0" * 64, tmp_path, ListTensors(), None, pool)
        flow = PluginFlow(plugin, GatewayMetrics(CollectorRegistry()))
        with pytest.raises(PluginFailedError) as err:
            await flow.preprocess(udl.Request(model="m", payload=b"", request_id="r1"))
    assert str(err.value) == (
        "plugin lists@1 preprocess produced tensor 'INPUT0' as list, not a numpy array (request r1)"
    )


# -- end to end: each surface of a real gateway -------------------------------------------


INVALID = grpc.StatusCode.INVALID_ARGUMENT
INT32_RANGE = "(INT32: integers from -2147483648 to 2147483647)"


def test_invoke_refuses_values_that_do_not_fit_their_datatype(routed):
    def invoke(data: Any, datatype: str = "INT32", shape: Any = (1,)) -> tuple[Any, str]:
        inputs = [{"name": "x", "shape": list(shape), "datatype": datatype, "data": data}]
        payload = json.dumps({"inputs": inputs}).encode()
        if data == "deep":
            payload = payload.replace(b'"deep"', b"[" * 100_000 + b"]" * 100_000)
        request = gateway_pb2.InvokeRequest(model=DOUBLE_MODEL, payload=payload)
        return raw_status(
            routed.address, "/modelgate.v1.Gateway/Invoke", request.SerializeToString()
        )

    # each of these was answered OK with a wrapped, truncated or infinite value, or INTERNAL
    assert invoke([2147483648]) == (
        INVALID,
        f"tensor 'x': value 2147483648 is out of range {INT32_RANGE}",
    )
    assert invoke([2**40]) == (
        INVALID,
        f"tensor 'x': value 1099511627776 is out of range {INT32_RANGE}",
    )
    assert invoke([1.7]) == (INVALID, f"tensor 'x': value 1.7 is not an integer {INT32_RANGE}")
    assert invoke([1e39], "FP32") == (
        INVALID,
        "tensor 'x': value 1e+39 is out of range (FP32: numbers from -3.402823e+38 to "
        "3.402823e+38)",
    )
    code, message = invoke([2**64], "INT64")
    assert code == INVALID and message.startswith("tensor 'x': value 18446744073709551616 is out")
    code, message = invoke("deep")
    assert code == INVALID and message.endswith("JSON nested too deeply")
    code, message = invoke(["x" * 100_000])
    assert code == INVALID and len(message) < 200 and "…" in message
    # and values that fit still work
    with grpc.insecure_channel(routed.address) as channel:
        payload = json.dumps(
            {"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [4, 2**31]}]}
        ).encode()
        response = gateway_pb2_grpc.GatewayStub(channel).Invoke(
            gateway_pb2.InvokeRequest(model=DOUBLE_MODEL, payload=payload), timeout=20
        )
    outputs = {o["name"]: o["data"] for o in json.loads(response.payload)["outputs"]}
    assert outputs["y"] == [8.0, 2.0**32]


def test_kserve_infer_refuses_bad_tensors(routed):
    def infer(request: kserve.ModelInferRequest) -> tuple[grpc.StatusCode, str]:
        request.model_name = DOUBLE_MODEL
        return raw_status(
            routed.address,
            "/inference.GRPCInferenceService/ModelInfer",
            request.SerializeToString(),
        )

    wrapped = kserve.ModelInferRequest()
    wrapped.inputs.add(name="x", datatype="INT8", shape=[2]).contents.int_contents.extend([1, 300])
    assert infer(wrapped) == (
        INVALID,
        "tensor 'x': value 300 is out of range (INT8: integers from -128 to 127)",
    )
    extra = kserve.ModelInferRequest(raw_input_contents=[b"\x00" * 4, b"\x00" * 4])
    extra.inputs.add(name="x", datatype="FP32", shape=[1])
    assert infer(extra) == (INVALID, "raw_input_contents has 2 entries for 1 inputs")
    short = kserve.ModelInferRequest(raw_input_contents=[b"\x00" * 7])
    short.inputs.add(name="x", datatype="FP32", shape=[2])
    assert infer(short) == (
        INVALID,
        "tensor 'x': raw contents of 7 bytes are not a multiple of the 4 bytes of one FP32",
    )


def test_tfserving_predict_refuses_bad_tensors(routed):
    def predict(tensor: tensor_pb2.TensorProto) -> tuple[grpc.StatusCode, str]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = ADD_ONE
        request.inputs["INPUT0"].CopyFrom(tensor)
        return raw_status(
            routed.address,
            "/tensorflow.serving.PredictionService/Predict",
            request.SerializeToString(),
        )

    def tensor(shape: list[int], **fields: Any) -> tensor_pb2.TensorProto:
        out = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, **fields)
        for d in shape:
            out.tensor_shape.dim.add(size=d)
        return out

    # was INTERNAL ("buffer size must be a multiple of element size")
    assert predict(tensor([2], tensor_content=b"\x00" * 7)) == (
        INVALID,
        "tensor 'INPUT0': tensor_content of 7 bytes is not a multiple of the 4 bytes of one "
        "DT_FLOAT",
    )
    assert predict(tensor([2, 2], tensor_content=b"\x00" * 4)) == (
        INVALID,
        "tensor 'INPUT0': 1 values do not fill shape [2, 2]",
    )
    assert predict(tensor([1], string_val=[b"1.0"])) == (
        INVALID,
        "tensor 'INPUT0': DT_FLOAT values belong in float_val or tensor_content, not string_val",
    )
    unknown = tensor([], float_val=[1.0])
    unknown.tensor_shape.unknown_rank = True
    assert predict(unknown) == (
        INVALID,
        "tensor 'INPUT0': tensor_shape has unknown_rank; a tensor value needs its shape",
    )
    assert predict(tensor([1], float_val=[1.0]))[0] == grpc.StatusCode.OK
