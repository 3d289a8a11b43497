"""The client's JSON tensor codec, checked against the gateway's own codec."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gateway import codec as gateway_codec
from modelgate_client.tensors import (
    DATATYPES,
    datatype_of,
    decode_outputs,
    encode_inputs,
    typed_array,
)

NUMERIC = [name for name in DATATYPES if name != "BYTES"]


@pytest.mark.parametrize("datatype", NUMERIC)
def test_every_numeric_datatype_round_trips_through_the_gateway_codec(datatype: str) -> None:
    array = np.arange(6).reshape(2, 3).astype(DATATYPES[datatype])

    # client -> gateway
    ((name, parsed),) = gateway_codec.json_to_tensors(encode_inputs({"IN": array}))
    assert name == "IN" and parsed.dtype == array.dtype and parsed.shape == (2, 3)
    np.testing.assert_array_equal(parsed, array)

    # gateway -> client
    outputs = decode_outputs(gateway_codec.tensors_to_json("m", "1", [("OUT", parsed)]))
    assert outputs["OUT"].dtype == array.dtype and outputs["OUT"].shape == (2, 3)
    np.testing.assert_array_equal(outputs["OUT"], array)


def test_bytes_and_str_tensors_travel_as_text() -> None:
    array = np.array([b"caf\xc3\xa9", b"", b"x"], dtype=object)
    payload = encode_inputs({"S": array, "U": np.array(["a", "b"])})

    doc = json.loads(payload)
    assert [t["datatype"] for t in doc["inputs"]] == ["BYTES", "BYTES"]
    assert doc["inputs"][0]["data"] == ["café", "", "x"]
    tensors = dict(gateway_codec.json_to_tensors(payload))
    assert list(tensors["S"]) == [b"caf\xc3\xa9", b"", b"x"]

    outputs = decode_outputs(gateway_codec.tensors_to_json("m", "1", [("S", tensors["S"])]))
    assert outputs["S"].dtype == object and list(outputs["S"]) == list(array)


def test_scalar_and_empty_tensors_keep_their_shape() -> None:
    payload = encode_inputs({"s": np.float32(2.5), "e": np.zeros((0, 3), np.int32)})
    doc = {t["name"]: t for t in json.loads(payload)["inputs"]}
    assert doc["s"]["shape"] == [] and doc["s"]["data"] == [2.5]
    assert doc["e"]["shape"] == [0, 3] and doc["e"]["data"] == []
    back = decode_outputs(json.dumps({"outputs": list(doc.values())}).encode())
    assert back["s"].shape == () and back["e"].shape == (0, 3)


def test_unsupported_inputs_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="complex128"):
        encode_inputs({"c": np.array([1j])})
    with pytest.raises(ValueError, match="not UTF-8"):
        encode_inputs({"b": np.array([b"\xff"], dtype=object)})
    assert datatype_of(np.array([1.0], dtype=">f4")) == "FP32"


def test_malformed_responses_are_refused() -> None:
    with pytest.raises(ValueError, match="not a JSON tensor response"):
        decode_outputs(b"not json")
    with pytest.raises(ValueError, match="unknown datatype"):
        decode_outputs(
            b'{"outputs": [{"name": "o", "shape": [1], "datatype": "FP8", "data": [1]}]}'
        )
    with pytest.raises(ValueError, match="name, shape, datatype, data"):
        decode_outputs(b'{"outputs": [{"name": "o"}]}')


@pytest.mark.parametrize(
    ("value", "message"),
    [
        # numpy would make these BYTES ("18446744073709551616"), lossy FP64, INT64 1, text "1"
        ([2**64], "value 18446744073709551616 is out of range (INT64: integers from"),
        ([-1, 2**63], "value 9223372036854775808 is out of range (INT64: integers from"),
        ([True, 2], "value true is not an integer (INT64"),
        (["a", 1], "value 1 is not text (BYTES: strings)"),
        ([1.5, None], "value null is not a number (FP64"),
        (np.array([b"a", 7], dtype=object), "value 7 is not text (BYTES: strings)"),
    ],
)
def test_python_values_that_do_not_fit_are_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError) as err:
        encode_inputs({"x": value})
    assert str(err.value).startswith(f"tensor 'x': {message}")


def test_python_values_that_fit_keep_the_datatype_numpy_infers() -> None:
    doc = json.loads(
        encode_inputs({"i": [[1, 2], [3, 4]], "u": [2**63], "f": [1, 2.5], "b": [True]})
    )
    assert [(t["datatype"], t["shape"], t["data"]) for t in doc["inputs"]] == [
        ("INT64", [2, 2], [1, 2, 3, 4]),
        ("UINT64", [1], [2**63]),
        ("FP64", [2], [1.0, 2.5]),
        ("BOOL", [1], [True]),
    ]


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        (
            "INT32",
            [2147483648],
            "value 2147483648 is out of range (INT32: integers from -2147483648 to 2147483647)",
        ),
        ("INT32", [1.7], "value 1.7 is not an integer (INT32"),
        ("FP32", [1e39], "value 1e+39 is out of range (FP32"),
        ("UINT8", [256], "value 256 is out of range (UINT8: integers from 0 to 255)"),
    ],
)
def test_response_values_that_do_not_fit_their_datatype_are_refused(
    datatype: str, data: list, message: str
) -> None:
    payload = json.dumps(
        {"outputs": [{"name": "o", "shape": [1], "datatype": datatype, "data": data}]}
    ).encode()
    with pytest.raises(ValueError) as err:
        decode_outputs(payload)
    assert str(err.value).startswith(f"tensor 'o': {message}")


def test_typed_array_is_the_rule_the_gateway_applies() -> None:
    for datatype, data in [("INT32", [2**31]), ("FP16", [1e5]), ("BOOL", [0]), ("INT8", [1.0])]:
        with pytest.raises(ValueError) as client_err:
            typed_array("x", datatype, data)
        payload = json.dumps(
            {"inputs": [{"name": "x", "shape": [1], "datatype": datatype, "data": data}]}
        ).encode()
        with pytest.raises(gateway_codec.InvalidArgumentError) as gateway_err:
            gateway_codec.json_to_tensors(payload)
        assert str(gateway_err.value) == str(client_err.value)
    assert typed_array("x", "FP32", [1, 0.5]).dtype == np.float32
    with pytest.raises(ValueError, match=r"value 1 is not text \(BYTES"):
        typed_array("x", "BYTES", [1])
