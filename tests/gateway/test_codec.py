"""Tensor conversion between KServe v2, TF-Serving and JSON (no servers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as kserve

from gateway import codec, translate
from gateway.errors import InvalidArgumentError
from protos.tfs.tensorflow.core.framework import tensor_pb2, types_pb2
from protos.tfs.tensorflow_serving.apis import predict_pb2

SAMPLES = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-3, 0, 3]], dtype=np.int16),
    "INT32": np.array([[-3, 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 3]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 2.0]], dtype=np.float16),
    "FP32": np.array([[0.5, -1.25, 3.0e38]], dtype=np.float32),
    "FP64": np.array([[0.5, -1.25, 1e300]], dtype=np.float64),
    "BYTES": np.array([[b"a", b"", b"\x00\xff"]], dtype=object),
}


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_kserve_to_tf_and_back_raw(datatype):
    arr = SAMPLES[datatype]
    request = kserve.ModelInferRequest(model_name="m")
    codec.add_kserve_inputs(request, [("x", arr)])
    assert request.inputs[0].datatype == datatype
    body, _, _ = translate.infer_to_predict(request.SerializeToString(), "m", 3)
    predict = predict_pb2.PredictRequest.FromString(body)
    assert predict.model_spec.version.value == 3
    back = codec.tf_to_array("x", predict.inputs["x"])
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert (back == arr).all()
    # and a response the other way
    response = predict_pb2.PredictResponse()
    response.outputs["y"].CopyFrom(codec.array_to_tf("y", arr))
    infer = kserve.ModelInferResponse.FromString(
        translate.predict_response_to_infer(response.SerializeToString(), "m", 3, [], "id")
    )
    assert infer.model_version == "3" and infer.id == "id"
    ((name, out),) = codec.kserve_response_outputs(infer)
    assert name == "y" and (out == arr).all() and out.dtype == arr.dtype


@pytest.mark.parametrize("datatype", sorted(set(SAMPLES) - {"FP16"}))
def test_kserve_typed_contents(datatype):
    arr = SAMPLES[datatype]
    request = kserve.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=list(arr.shape))
    field = getattr(tensor.contents, codec._KSERVE_FIELDS[datatype])
    field.extend(arr.reshape(-1).tolist())
    ((_, back),) = codec.kserve_request_inputs(request)
    assert (back == arr).all() and back.dtype == arr.dtype


@pytest.mark.parametrize(
    ("dtype", "field", "values", "expected"),
    [
        (types_pb2.DT_FLOAT, "float_val", [1.5, 2.5], np.float32),
        (types_pb2.DT_DOUBLE, "double_val", [1.5, 2.5], np.float64),
        (types_pb2.DT_INT32, "int_val", [-1, 2], np.int32),
        (types_pb2.DT_INT8, "int_val", [-1, 2], np.int8),
        (types_pb2.DT_UINT8, "int_val", [1, 255], np.uint8),
        (types_pb2.DT_INT64, "int64_val", [-1, 2**40], np.int64),
        (types_pb2.DT_UINT32, "uint32_val", [1, 2**32 - 1], np.uint32),
        (types_pb2.DT_UINT64, "uint64_val", [1, 2**63], np.uint64),
        (types_pb2.DT_BOOL, "bool_val", [True, False], np.bool_),
        (types_pb2.DT_STRING, "string_val", [b"a", b"bc"], object),
        (types_pb2.DT_HALF, "half_val", [0x3C00, 0x4000], np.float16),
    ],
)
def test_tf_typed_values(dtype, field, values, expected):
    tensor = tensor_pb2.TensorProto(dtype=dtype)
    tensor.tensor_shape.dim.add(size=2)
    getattr(tensor, field).extend(values)
    arr = codec.tf_to_array("x", tensor)
    assert arr.dtype == np.dtype(expected) and arr.shape == (2,)
    if field == "half_val":
        assert arr.tolist() == [1.0, 2.0]
    else:
        assert arr.tolist() == values


def test_tf_single_value_broadcasts_to_shape():
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[7.0])
    tensor.tensor_shape.dim.add(size=2)
    tensor.tensor_shape.dim.add(size=2)
    assert codec.tf_to_array("x", tensor).tolist() == [[7.0, 7.0], [7.0, 7.0]]


def test_unsupported_dtypes_are_named():
    request = kserve.ModelInferRequest(model_name="m")
    request.inputs.add(name="img", datatype="BF16", shape=[1])
    request.raw_input_contents.append(b"\x00\x00")
    with pytest.raises(InvalidArgumentError, match="tensor 'img': datatype BF16 is not supported"):
        translate.infer_to_predict(request.SerializeToString(), "m", 1)
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_COMPLEX64)
    with pytest.raises(InvalidArgumentError, match="datatype DT_COMPLEX64 is not supported"):
        codec.tf_to_array("z", tensor)
    with pytest.raises(InvalidArgumentError, match="3 values do not fill shape"):
        codec._shape("x", np.zeros(3), [2, 2])
    # a single value with an absurd shape is refused, not broadcast into memory
    with pytest.raises(InvalidArgumentError, match="1 values do not fill shape"):
        codec._shape("x", np.zeros(1), [1 << 20, 1 << 20])
    with pytest.raises(InvalidArgumentError, match="negative dimension"):
        codec._shape("x", np.zeros(1), [-1])


def test_json_codec_round_trip_and_errors():
    payload = json.dumps(
        {
            "inputs": [
                {"name": "INPUT0", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["hi"]},
            ]
        }
    ).encode()
    tensors = codec.json_to_tensors(payload)
    assert tensors[0][1].dtype == np.float32 and tensors[1][1].tolist() == [b"hi"]
    doc = json.loads(codec.tensors_to_json("m", "1", tensors))
    assert doc["outputs"][0] == {
        "name": "INPUT0",
        "shape": [2],
        "datatype": "FP32",
        "data": [1.0, 2.0],
    }
    assert doc["outputs"][1]["data"] == ["hi"]
    with pytest.raises(InvalidArgumentError, match="not a JSON tensor request"):
        codec.json_to_tensors(b"[1, 2")
    with pytest.raises(InvalidArgumentError, match="datatype COMPLEX is not supported"):
        codec.json_to_tensors(
            b'{"inputs": [{"name": "a", "shape": [1], "datatype": "complex", "data": [1]}]}'
        )


@pytest.mark.parametrize(
    "raw", [b"\x01\x00", b"\x05\x00\x00\x00ab"], ids=["cut-length", "cut-element"]
)
def test_truncated_bytes_contents_are_refused(raw):
    request = kserve.ModelInferRequest(model_name="m")
    request.inputs.add(name="s", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(raw)
    with pytest.raises(InvalidArgumentError, match="tensor 's': truncated BYTES contents"):
        codec.kserve_request_inputs(request)
