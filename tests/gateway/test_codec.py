"""Tensor conversion between KServe v2, TF-Serving and JSON (no servers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as kserve

from gateway import codec, translate
from gateway.errors import InvalidArgumentError
from protos.tfs.tensorflow.core.framework import tensor_pb2, types_pb2
from protos.tfs.tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

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


def json_input(datatype: str, data: object, shape: object = None, name: str = "IN") -> bytes:
    shape = [len(data)] if shape is None and isinstance(data, list) else shape
    return json.dumps(
        {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}
    ).encode()


INT32_RANGE = "(INT32: integers from -2147483648 to 2147483647)"


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT32", [1, 2147483648], f"value 2147483648 is out of range {INT32_RANGE}"),
        ("INT32", [2**40], f"value 1099511627776 is out of range {INT32_RANGE}"),
        ("INT32", [-(2**31) - 1], f"value -2147483649 is out of range {INT32_RANGE}"),
        ("INT32", [1.7], f"value 1.7 is not an integer {INT32_RANGE}"),
        ("INT32", [2.0], f"value 2.0 is not an integer {INT32_RANGE}"),
        ("INT32", [True], f"value true is not an integer {INT32_RANGE}"),
        ("INT32", ["3"], f'value "3" is not an integer {INT32_RANGE}'),
        ("UINT8", [-1], "value -1 is out of range (UINT8: integers from 0 to 255)"),
        ("INT64", [2**63], "value 9223372036854775808 is out of range (INT64: integers from"),
        ("UINT64", [2**64], "value 18446744073709551616 is out of range (UINT64: integers"),
        ("FP32", [1e39], "value 1e+39 is out of range (FP32: numbers from -3.402823e+38 to"),
        ("FP16", [1, 70000], "value 70000 is out of range (FP16: numbers from -65504 to 65504)"),
        ("FP64", [False], "value false is not a number (FP64: numbers from"),
        ("BOOL", [1], "value 1 is not a boolean (BOOL: true or false)"),
        ("BYTES", [104], "value 104 is not text (BYTES: strings)"),
        ("FP32", [[1, 2], [3]], "data is not a rectangular array of values"),
    ],
)
def test_json_values_that_do_not_fit_their_datatype_are_refused(datatype, data, message):
    with pytest.raises(InvalidArgumentError) as err:
        codec.json_to_tensors(json_input(datatype, data))
    assert str(err.value).startswith(f"tensor 'IN': {message}")


def test_json_values_that_fit_are_taken_as_they_are():
    def decoded(datatype, data, shape=None):
        ((_, arr),) = codec.json_to_tensors(json_input(datatype, data, shape))
        return arr

    assert decoded("INT32", [-(2**31), 2**31 - 1]).tolist() == [-(2**31), 2**31 - 1]
    assert decoded("UINT64", [2**64 - 1]).tolist() == [2**64 - 1]
    assert decoded("INT64", [-(2**63)]).dtype == np.int64
    # floats: integers and numbers, rounded to the nearest value; NaN and Infinity pass
    assert decoded("FP32", [1, 0.1, 3.4e38]).tolist() == np.array([1, 0.1, 3.4e38], "f4").tolist()
    assert decoded("FP16", [65504, 65519]).tolist() == [65504.0, 65504.0]
    arr = decoded("FP32", [float("inf"), float("nan")])
    assert np.isinf(arr[0]) and np.isnan(arr[1])
    assert decoded("BOOL", [True, False]).tolist() == [True, False]
    assert decoded("FP64", [[1, 2], [3, 4]], [2, 2]).tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_json_overflow_and_recursion_are_invalid_argument():
    with pytest.raises(InvalidArgumentError, match=r"value 18446744073709551616 is out of range"):
        codec.json_to_tensors(json_input("INT64", [2**64]))
    with pytest.raises(InvalidArgumentError, match=r"shape \[9223372036854775808\] has more"):
        codec.json_to_tensors(json_input("INT64", [1], shape=[2**63]))
    with pytest.raises(InvalidArgumentError, match=r"shape \[1.5\] is not a list of integers"):
        codec.json_to_tensors(json_input("INT64", [1], shape=[1.5]))
    deep = b'{"inputs": [{"name": "IN", "shape": [1], "datatype": "FP32", "data": ' + (
        b"[" * 100_000 + b"]" * 100_000 + b"}]}"
    )
    with pytest.raises(InvalidArgumentError, match=r"not a JSON tensor request.*nested too deeply"):
        codec.json_to_tensors(deep)
    with pytest.raises(InvalidArgumentError, match="input 'IN' appears twice"):
        codec.json_to_tensors(
            json.dumps({"inputs": [json.loads(json_input("FP32", [1]))["inputs"][0]] * 2}).encode()
        )


def test_echoed_values_and_names_are_capped():
    with pytest.raises(InvalidArgumentError) as err:
        codec.json_to_tensors(json_input("INT32", ["x" * 100_000], name="n" * 100_000))
    message = str(err.value)
    assert len(message) < 250 and message.count("…") == 2
    assert message.startswith("tensor 'nnnn") and "is not an integer (INT32" in message
    with pytest.raises(InvalidArgumentError) as err:
        codec.json_to_tensors(json_input("INT32", [10**4000]))
    assert "value <an integer of 13288 bits> is out of range" in str(err.value)


def tf_tensor(dtype: int, shape: list[int], **fields) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=dtype, **fields)  # type: ignore[arg-type]
    for d in shape:
        tensor.tensor_shape.dim.add(size=d)
    return tensor


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (tf_tensor(types_pb2.DT_FLOAT, [2], tensor_content=b"\x00" * 7),
         "tensor_content of 7 bytes is not a multiple of the 4 bytes of one DT_FLOAT"),
        (tf_tensor(types_pb2.DT_FLOAT, [3], tensor_content=b"\x00" * 8),
         "2 values do not fill shape [3]"),
        (tf_tensor(types_pb2.DT_FLOAT, [4, 4], tensor_content=b"\x00" * 4),
         "1 values do not fill shape [4, 4]"),
        (tf_tensor(types_pb2.DT_FLOAT, [1], string_val=[b"1.5"]),
         "DT_FLOAT values belong in float_val or tensor_content, not string_val"),
        (tf_tensor(types_pb2.DT_STRING, [1], tensor_content=b"ab"),
         "DT_STRING values belong in string_val, not tensor_content"),
        (tf_tensor(types_pb2.DT_UINT8, [2], int_val=[1, 300]),
         "value 300 is out of range (UINT8: integers from 0 to 255)"),
        (tf_tensor(types_pb2.DT_INT8, [1], int_val=[-129]),
         "value -129 is out of range (INT8: integers from -128 to 127)"),
        (tf_tensor(types_pb2.DT_HALF, [1], half_val=[70000]),
         "half_val 70000 is not a 16-bit pattern (0 to 65535)"),
        (tf_tensor(types_pb2.DT_FLOAT, [1] * 33, float_val=[1.0]),
         "shape has 33 dimensions (at most 32)"),
        (tf_tensor(types_pb2.DT_FLOAT, [0, 2**62, 2**62], tensor_content=b""),
         "shape [0, 4611686018427387904, 4611686018427387904] has more elements"),
    ],
)  # fmt: skip
def test_bad_tf_tensors_are_invalid_argument(tensor, message):
    with pytest.raises(InvalidArgumentError) as err:
        codec.tf_to_array("x", tensor)
    assert str(err.value).startswith(f"tensor 'x': {message}")


def test_tf_unknown_rank_is_refused():
    tensor = tf_tensor(types_pb2.DT_FLOAT, [], float_val=[1.0])
    tensor.tensor_shape.unknown_rank = True
    with pytest.raises(InvalidArgumentError, match="tensor_shape has unknown_rank"):
        codec.tf_to_array("x", tensor)


def kserve_request(*inputs: tuple[str, str, list[int]], raw: list[bytes] = ()):  # type: ignore[assignment]
    request = kserve.ModelInferRequest(model_name="m")
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend(raw)
    return request


def test_bad_kserve_tensors_are_invalid_argument():
    def refused(request, message):
        with pytest.raises(InvalidArgumentError) as err:
            translate.infer_to_predict(request.SerializeToString(), "m", 1)
        assert str(err.value) == message

    refused(
        kserve_request(("a", "FP32", [2]), raw=[b"\x00" * 7]),
        "tensor 'a': raw contents of 7 bytes are not a multiple of the 4 bytes of one FP32",
    )
    refused(
        kserve_request(("a", "FP32", [3]), raw=[b"\x00" * 8]),
        "tensor 'a': 2 values do not fill shape [3]",
    )
    refused(
        kserve_request(("a", "FP32", [1]), raw=[b"\x00" * 4] * 2),
        "raw_input_contents has 2 entries for 1 inputs",
    )
    refused(
        kserve_request(("a", "FP32", [1]), ("a", "FP32", [1]), raw=[b"\x00" * 4] * 2),
        "input 'a' appears twice",
    )
    refused(
        kserve_request(("a", "FP32", [1] * 40), raw=[b"\x00" * 4]),
        "tensor 'a': shape has 40 dimensions (at most 32)",
    )
    refused(
        kserve_request(("a", "FP32", [0, 2**62, 2**62]), raw=[b""]),
        "tensor 'a': shape [0, 4611686018427387904, 4611686018427387904] has more elements "
        "than a tensor can hold",
    )
    both = kserve_request(("a", "FP32", [1]), raw=[b"\x00" * 4])
    both.inputs[0].contents.fp32_contents.append(1.0)
    refused(both, "tensor 'a': contents and raw_input_contents are both set")
    narrow = kserve_request(("a", "INT8", [2]))
    narrow.inputs[0].contents.int_contents.extend([1, 300])
    refused(narrow, "tensor 'a': value 300 is out of range (INT8: integers from -128 to 127)")
    misplaced = kserve_request(("a", "FP32", [1]))
    misplaced.inputs[0].contents.int_contents.append(1)
    refused(misplaced, "tensor 'a': FP32 values belong in contents.fp32_contents, not "
            "contents.int_contents")  # fmt: skip
    half = kserve_request(("a", "FP16", [1]))
    half.inputs[0].contents.fp32_contents.append(1.0)
    refused(half, "tensor 'a': FP16 has no typed contents field; send it in raw contents")


def test_kserve_response_with_missing_raw_outputs_is_invalid_argument():
    response = kserve.ModelInferResponse(model_name="m")
    response.outputs.add(name="a", datatype="FP32", shape=[1])
    response.outputs.add(name="b", datatype="FP32", shape=[1])
    response.raw_output_contents.append(b"\x00" * 4)
    with pytest.raises(InvalidArgumentError, match="raw_output_contents has 1 entries for 2"):
        translate.infer_response_to_predict(response.SerializeToString(), "m", 1, "")


def test_metadata_with_a_signature_map_that_does_not_parse_is_invalid_argument():
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.metadata["signature_def"].Pack(get_model_metadata_pb2.SignatureDefMap())
    response.metadata["signature_def"].value = b"\xff\xff"
    with pytest.raises(InvalidArgumentError, match="signature_def does not parse as protobuf"):
        translate.tf_metadata_to_kserve(response.SerializeToString(), "m", 1)
