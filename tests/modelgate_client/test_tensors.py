"""The client's JSON tensor codec, checked against the gateway's own codec."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gateway import codec as gateway_codec
from modelgate_client.tensors import DATATYPES, datatype_of, decode_outputs, encode_inputs

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
