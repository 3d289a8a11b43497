"""Tensor conversion between KServe v2, TF-Serving and the JSON codec of ``Invoke``.

numpy arrays are the common form; BYTES/DT_STRING tensors are object arrays of ``bytes``.
Any dtype outside ``SUPPORTED_DATATYPES`` is refused with INVALID_ARGUMENT naming it.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as kserve
from tritonclient.utils import (
    deserialize_bytes_tensor,
    np_to_triton_dtype,
    serialize_byte_tensor,
    triton_to_np_dtype,
)

from gateway.errors import InvalidArgumentError
from protos.tfs.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

Named = list[tuple[str, np.ndarray]]

#: TF DataType enum -> (numpy dtype, TensorProto typed field), in KServe's datatype order.
TF_DTYPES: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_UINT16: (np.dtype(np.uint16), "int_val"),
    types_pb2.DT_UINT32: (np.dtype(np.uint32), "uint32_val"),
    types_pb2.DT_UINT64: (np.dtype(np.uint64), "uint64_val"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_HALF: (np.dtype(np.float16), "half_val"),
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val"),
}
_NP_TO_TF = {np_dtype: enum for enum, (np_dtype, _) in TF_DTYPES.items()}

#: The KServe datatypes the gateway decodes: those with a TF-Serving counterpart (so not
#: BF16, which numpy lacks). tritonclient maps them to and from numpy.
SUPPORTED_DATATYPES = tuple(np_to_triton_dtype(dtype) for dtype, _ in TF_DTYPES.values())

#: KServe InferTensorContents field per datatype.
_KSERVE_FIELDS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def kserve_datatype_of_tf(enum: int) -> str:
    """KServe datatype of a TF DataType enum value ("" when unsupported)."""
    spec = TF_DTYPES.get(enum)
    return np_to_triton_dtype(spec[0]) if spec else ""


def tf_dtype_of_kserve(datatype: str) -> int:
    """TF DataType enum value of a KServe datatype (0, DT_INVALID, when unsupported)."""
    if datatype not in SUPPORTED_DATATYPES:
        return 0
    return _NP_TO_TF[np.dtype(triton_to_np_dtype(datatype))]


def _numpy_dtype(name: str, datatype: str) -> np.dtype:
    if datatype not in SUPPORTED_DATATYPES:
        raise _unsupported(name, datatype)
    return np.dtype(triton_to_np_dtype(datatype))


def _unsupported(name: str, dtype: object) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"tensor {name!r}: datatype {dtype} is not supported by the gateway (supported: "
        f"{', '.join(SUPPORTED_DATATYPES)})"
    )


#: Most elements a single broadcast value may fill (a bad shape must not exhaust memory).
MAX_BROADCAST = 1 << 24


def _shape(name: str, values: np.ndarray, shape: list[int]) -> np.ndarray:
    if any(d < 0 for d in shape):
        raise InvalidArgumentError(f"tensor {name!r}: negative dimension in shape {shape}")
    count = math.prod(shape)
    if values.size == count:
        return values.reshape(shape)
    if values.size == 1 and count <= MAX_BROADCAST:
        # NOTE: TF-Serving broadcasts a single typed value to the whole shape
        return np.full(shape, values.reshape(())[()], dtype=values.dtype)
    raise InvalidArgumentError(
        f"tensor {name!r}: {values.size} values do not fill shape {list(shape)}"
    )


# -- BYTES raw encoding (4-byte little-endian length before each element) ------------------


def decode_bytes(name: str, raw: bytes) -> np.ndarray:
    try:
        return deserialize_bytes_tensor(raw)
    except struct.error:
        raise InvalidArgumentError(f"tensor {name!r}: truncated BYTES contents") from None


def encode_bytes(values: np.ndarray) -> bytes:
    # NOTE: tritonclient returns the encoding as a 0-d object array (an empty 1-d one for
    # no elements); joining its elements gives the bytes in both cases.
    return b"".join(serialize_byte_tensor(values).reshape(-1))


def _from_raw(name: str, datatype: str, raw: bytes, shape: list[int]) -> np.ndarray:
    dtype = _numpy_dtype(name, datatype)
    if datatype == "BYTES":
        return _shape(name, decode_bytes(name, raw), shape)
    if len(raw) % dtype.itemsize:
        raise InvalidArgumentError(f"tensor {name!r}: raw contents not a multiple of {datatype}")
    return _shape(name, np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype), shape)


def _from_contents(name: str, datatype: str, contents: Any, shape: list[int]) -> np.ndarray:
    dtype = _numpy_dtype(name, datatype)
    field = _KSERVE_FIELDS.get(datatype)
    if field is None:
        raise _unsupported(name, datatype)
    values = list(getattr(contents, field))
    if datatype == "BYTES":
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
    else:
        arr = np.asarray(values, dtype=dtype)
    return _shape(name, arr, shape)


def kserve_request_inputs(request: kserve.ModelInferRequest) -> Named:
    raw = request.raw_input_contents
    out: Named = []
    for i, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        if raw:
            if i >= len(raw):
                raise InvalidArgumentError(f"tensor {tensor.name!r}: missing raw_input_contents")
            out.append((tensor.name, _from_raw(tensor.name, tensor.datatype, raw[i], shape)))
        else:
            out.append(
                (tensor.name, _from_contents(tensor.name, tensor.datatype, tensor.contents, shape))
            )
    return out


def kserve_response_outputs(response: kserve.ModelInferResponse) -> Named:
    raw = response.raw_output_contents
    out: Named = []
    for i, tensor in enumerate(response.outputs):
        shape = list(tensor.shape)
        if raw:
            out.append((tensor.name, _from_raw(tensor.name, tensor.datatype, raw[i], shape)))
        else:
            out.append(
                (tensor.name, _from_contents(tensor.name, tensor.datatype, tensor.contents, shape))
            )
    return out


def kserve_datatype(name: str, arr: np.ndarray) -> str:
    if arr.dtype not in _NP_TO_TF:
        raise _unsupported(name, arr.dtype)
    return np_to_triton_dtype(arr.dtype)


def _raw(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return encode_bytes(arr)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def add_kserve_inputs(request: kserve.ModelInferRequest, tensors: Named) -> None:
    for name, arr in tensors:
        datatype = kserve_datatype(name, arr)
        request.inputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        request.raw_input_contents.append(_raw(arr, datatype))


def add_kserve_outputs(response: kserve.ModelInferResponse, tensors: Named) -> None:
    for name, arr in tensors:
        datatype = kserve_datatype(name, arr)
        response.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        response.raw_output_contents.append(_raw(arr, datatype))


# -- TF-Serving TensorProto ----------------------------------------------------------------


def tf_to_array(name: str, tensor: tensor_pb2.TensorProto) -> np.ndarray:
    spec = TF_DTYPES.get(tensor.dtype)
    if spec is None:
        known = tensor.dtype in types_pb2.DataType.values()
        dtype_name = types_pb2.DataType.Name(tensor.dtype) if known else tensor.dtype
        raise _unsupported(name, dtype_name)
    dtype, field = spec
    shape = [d.size for d in tensor.tensor_shape.dim]
    if tensor.tensor_content and dtype.kind != "O":
        arr = np.frombuffer(tensor.tensor_content, dtype=dtype.newbyteorder("<")).astype(dtype)
        return _shape(name, arr, shape)
    values = getattr(tensor, field)
    if dtype.kind == "O":
        arr = np.empty(len(values), dtype=object)
        arr[:] = list(values)
    elif field == "half_val":
        arr = np.asarray(list(values), dtype=np.uint16).view(np.float16)
    else:
        arr = np.asarray(list(values), dtype=dtype)
    return _shape(name, arr, shape)


def array_to_tf(name: str, arr: np.ndarray) -> tensor_pb2.TensorProto:
    enum = _NP_TO_TF.get(arr.dtype)
    if enum is None:
        raise _unsupported(name, arr.dtype)
    tensor = tensor_pb2.TensorProto(
        dtype=enum,  # type: ignore[arg-type]
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(s)) for s in arr.shape]
        ),
    )
    if arr.dtype == object:
        tensor.string_val.extend(
            x if isinstance(x, bytes) else str(x).encode() for x in arr.reshape(-1)
        )
    else:
        tensor.tensor_content = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()
    return tensor


# -- JSON codec of Invoke ------------------------------------------------------------------


def json_to_tensors(payload: bytes) -> Named:
    """``{"inputs": [{"name", "shape", "datatype", "data"}]}`` -> named arrays."""
    try:
        doc = json.loads(payload or b"{}")
        items = doc["inputs"]
        out: Named = []
        for item in items:
            name, datatype = str(item["name"]), str(item["datatype"]).upper()
            dtype = _numpy_dtype(name, datatype)
            data = item["data"]
            if datatype == "BYTES":
                flat = np.asarray(data, dtype=object).reshape(-1)
                arr = np.empty(flat.size, dtype=object)
                arr[:] = [x.encode() if isinstance(x, str) else bytes(x) for x in flat]
            else:
                arr = np.asarray(data, dtype=dtype).reshape(-1)
            out.append((name, _shape(name, arr, [int(s) for s in item["shape"]])))
        return out
    except InvalidArgumentError:
        raise
    except (ValueError, KeyError, TypeError) as err:
        raise InvalidArgumentError(
            'payload is not a JSON tensor request {"inputs": [{"name", "shape", "datatype", '
            f'"data"}}]}}: {type(err).__name__}: {err}'
        ) from None


def tensors_to_json(model: str, version: str, tensors: Named) -> bytes:
    outputs = []
    for name, arr in tensors:
        datatype = kserve_datatype(name, arr)
        if datatype == "BYTES":
            data: list[Any] = [
                x.decode(errors="replace") if isinstance(x, bytes) else str(x)
                for x in arr.reshape(-1)
            ]
        else:
            data = arr.reshape(-1).tolist()
        outputs.append({"name": name, "shape": list(arr.shape), "datatype": datatype, "data": data})
    return json.dumps({"model_name": model, "model_version": version, "outputs": outputs}).encode()


def select(model: str, tensors: dict[str, np.ndarray], names: list[str]) -> Named:
    """The outputs a caller asked for, in its order (all, sorted by name, when it asked for
    none); INVALID_ARGUMENT naming the model and an output it did not return."""
    if not names:
        return sorted(tensors.items())
    missing = [n for n in names if n not in tensors]
    if missing:
        raise InvalidArgumentError(
            f"model {model!r} has no output {missing[0]!r} (it returned {sorted(tensors)})"
        )
    return [(n, tensors[n]) for n in names]
