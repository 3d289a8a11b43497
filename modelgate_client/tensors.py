"""numpy helpers for the gateway's JSON tensor codec (models without a plugin).

Request payload (``content_type="application/json"``)::

    {"inputs": [{"name": "INPUT0", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}

Response payload: ``{"model_name", "model_version", "outputs": [...]}`` with the same tensor
fields. Datatypes use the KServe v2 names (``FP32``, ``INT64``, ``BYTES``, ...); ``data`` is
the flattened tensor in row-major order. BYTES tensors travel as JSON strings (UTF-8).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

#: KServe v2 datatype name -> numpy dtype (BYTES: object arrays of ``bytes``), as
#: tritonclient maps them; BF16 is left out (numpy has no bfloat16, the gateway refuses it).
DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(triton_to_np_dtype(name))
    for name in (
        *("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"),
        *("FP16", "FP32", "FP64", "BYTES"),
    )
}

#: The content type of JSON tensor payloads.
JSON_CONTENT_TYPE = "application/json"


def datatype_of(array: np.ndarray) -> str:
    """The KServe datatype name of ``array`` (str/bytes arrays are ``BYTES``)."""
    if array.dtype.kind in ("S", "U", "O"):
        return "BYTES"
    name = np_to_triton_dtype(array.dtype.newbyteorder("="))
    if name not in DATATYPES:
        raise ValueError(
            f"numpy dtype {array.dtype} has no KServe datatype (supported: {', '.join(DATATYPES)})"
        )
    return name


def _bytes_item(item: object) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(
                "BYTES element is not UTF-8; the JSON codec carries text only"
            ) from None
    return str(item)


def tensor_to_json(name: str, value: npt.ArrayLike) -> dict[str, Any]:
    """One ``{"name", "shape", "datatype", "data"}`` entry for ``value``."""
    array = np.asarray(value)
    datatype = datatype_of(array)
    data: list[Any]
    if datatype == "BYTES":
        data = [_bytes_item(x) for x in array.reshape(-1)]
    else:
        data = array.reshape(-1).tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def encode_inputs(inputs: Mapping[str, npt.ArrayLike]) -> bytes:
    """``{"INPUT0": np.array(...)}`` -> a JSON request payload (names kept in order).

    Pass arrays with the dtype the model expects (``np.float32`` for ``FP32``): a plain
    Python list becomes ``INT64`` or ``FP64``.
    """
    return json.dumps({"inputs": [tensor_to_json(n, v) for n, v in inputs.items()]}).encode()


def tensor_from_json(item: Mapping[str, Any]) -> tuple[str, np.ndarray]:
    """One JSON tensor entry -> ``(name, array)`` with its datatype and shape."""
    try:
        name = str(item["name"])
        datatype = str(item["datatype"]).upper()
        shape = [int(s) for s in item["shape"]]
        data = item["data"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not a JSON tensor {{name, shape, datatype, data}}: {err}") from None
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise ValueError(f"tensor {name!r}: unknown datatype {datatype!r}")
    if datatype == "BYTES":
        flat = np.empty(len(data), dtype=object)
        flat[:] = [x.encode() if isinstance(x, str) else bytes(x) for x in data]
    else:
        flat = np.asarray(data, dtype=dtype)
    return name, flat.reshape(shape)


def decode_outputs(payload: bytes) -> dict[str, np.ndarray]:
    """A JSON response payload -> ``{"OUTPUT0": np.ndarray}`` (shape and dtype restored)."""
    try:
        doc = json.loads(payload)
        items = doc["outputs"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f'payload is not a JSON tensor response {{"outputs": [...]}}: {err}'
        ) from None
    return dict(tensor_from_json(item) for item in items)
