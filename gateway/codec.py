"""Tensor conversion between KServe v2, TF-Serving and the JSON codec of ``Invoke``.

numpy arrays are the common form; BYTES/DT_STRING tensors are object arrays of ``bytes``.
Raw contents decode to read-only views of the message's bytes (no copy).
Any dtype outside ``SUPPORTED_DATATYPES`` is refused with INVALID_ARGUMENT naming it, and so
is anything a decoder cannot take as it is: a value that does not fit its datatype (the rule
of :func:`modelgate_client.tensors.typed_array`), contents whose size does not match the
shape and datatype, an impossible shape. Echoed names and values are capped.
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
)

from gateway.errors import InvalidArgumentError
from modelgate_client.tensors import capped, quoted, shown, typed_array
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
# NOTE: tritonclient's mappings are chains of comparisons (~5-20 us a call): looked up once
_KSERVE_OF_NP = {np_dtype: np_to_triton_dtype(np_dtype) for np_dtype in _NP_TO_TF}
_NP_OF_KSERVE = {datatype: np_dtype for np_dtype, datatype in _KSERVE_OF_NP.items()}
SUPPORTED_DATATYPES = tuple(_KSERVE_OF_NP.values())

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
    return _KSERVE_OF_NP[spec[0]] if spec else ""


def tf_dtype_of_kserve(datatype: str) -> int:
    """TF DataType enum value of a KServe datatype (0, DT_INVALID, when unsupported)."""
    np_dtype = _NP_OF_KSERVE.get(datatype)
    return 0 if np_dtype is None else _NP_TO_TF[np_dtype]


def _numpy_dtype(name: str, datatype: str) -> np.dtype:
    np_dtype = _NP_OF_KSERVE.get(datatype)
    if np_dtype is None:
        raise _unsupported(name, datatype)
    return np_dtype


def _unsupported(name: str, dtype: object) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"tensor {quoted(name)}: datatype {capped(str(dtype))} is not supported by the gateway "
        f"(supported: {', '.join(SUPPORTED_DATATYPES)})"
    )


def _checked(name: str, datatype: str, values: Any) -> np.ndarray:
    """``values`` (JSON or protobuf scalars) as a flat array of ``datatype``, each value
    checked to fit it: INVALID_ARGUMENT naming the first that does not."""
    try:
        return typed_array(name, datatype, values)
    except ValueError as err:
        raise InvalidArgumentError(str(err)) from None


#: Most elements a single broadcast value may fill (a bad shape must not exhaust memory).
MAX_BROADCAST = 1 << 24
#: Most dimensions of a tensor (numpy's limit).
MAX_DIMS = 32
#: Most bytes a tensor can hold (numpy's limit).
_MAX_SIZE = int(np.iinfo(np.intp).max)


def _check_shape(name: str, shape: list[int], itemsize: int) -> int:
    """The element count of ``shape``; INVALID_ARGUMENT for a shape no tensor can have."""
    if len(shape) > MAX_DIMS:
        raise InvalidArgumentError(
            f"tensor {quoted(name)}: shape has {len(shape)} dimensions (at most {MAX_DIMS})"
        )
    if any(d < 0 for d in shape):
        raise InvalidArgumentError(
            f"tensor {quoted(name)}: negative dimension in shape {shown(shape)}"
        )
    # NOTE: numpy refuses even an empty array whose other dimensions overflow its size
    if math.prod(d for d in shape if d) * max(itemsize, 1) > _MAX_SIZE:
        raise InvalidArgumentError(
            f"tensor {quoted(name)}: shape {shown(shape)} has more elements than a tensor can hold"
        )
    return math.prod(shape)


def _shape(name: str, values: np.ndarray, shape: list[int], broadcast: bool = True) -> np.ndarray:
    """``values`` in ``shape``. A single value fills the shape when ``broadcast`` (TF-Serving
    typed values); otherwise the count must match (raw bytes)."""
    count = _check_shape(name, shape, values.dtype.itemsize)
    if values.size == count:
        return values.reshape(shape)
    if broadcast and values.size == 1 and count <= MAX_BROADCAST:
        # NOTE: TF-Serving broadcasts a single typed value to the whole shape
        return np.full(shape, values.reshape(())[()], dtype=values.dtype)
    raise InvalidArgumentError(
        f"tensor {quoted(name)}: {values.size} values do not fill shape {shown(shape)}"
    )


# -- BYTES raw encoding (4-byte little-endian length before each element) ------------------


def decode_bytes(name: str, raw: bytes) -> np.ndarray:
    try:
        return deserialize_bytes_tensor(raw)
    except struct.error:
        raise InvalidArgumentError(f"tensor {quoted(name)}: truncated BYTES contents") from None


def encode_bytes(values: np.ndarray) -> bytes:
    # NOTE: tritonclient returns the encoding as a 0-d object array (an empty 1-d one for
    # no elements); joining its elements gives the bytes in both cases.
    return b"".join(serialize_byte_tensor(values).reshape(-1))


#: Datatypes carried in a wider protobuf field (int32/uint32): their values are range-checked.
_NARROWER_THAN_FIELD = frozenset({"INT8", "INT16", "UINT8", "UINT16"})


def _proto_values(name: str, datatype: str, values: list[Any]) -> np.ndarray:
    """The values of a typed protobuf field as a flat array of ``datatype``."""
    if datatype in _NARROWER_THAN_FIELD:
        return _checked(name, datatype, values)
    if datatype == "BYTES":
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr
    # NOTE: the field's own type (float, int64, ...) fits the datatype: no check needed
    return np.array(values, dtype=_NP_OF_KSERVE[datatype])


def _bytes_of(size: int) -> str:
    return f"{size} byte{'s' if size != 1 else ''}"


def _from_raw(name: str, datatype: str, raw: bytes, shape: list[int]) -> np.ndarray:
    dtype = _numpy_dtype(name, datatype)
    if datatype == "BYTES":
        return _shape(name, decode_bytes(name, raw), shape, broadcast=False)
    if len(raw) % dtype.itemsize:
        raise InvalidArgumentError(
            f"tensor {quoted(name)}: raw contents of {_bytes_of(len(raw))} are not a multiple "
            f"of the {_bytes_of(dtype.itemsize)} of one {datatype}"
        )
    # NOTE: a read-only view of the request's bytes (no copy on little-endian hosts)
    values = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    return _shape(name, values, shape, broadcast=False)


def _from_contents(name: str, datatype: str, contents: Any, shape: list[int]) -> np.ndarray:
    _numpy_dtype(name, datatype)
    field = _KSERVE_FIELDS.get(datatype)
    if field is None:
        raise InvalidArgumentError(
            f"tensor {quoted(name)}: {datatype} has no typed contents field; send it in raw "
            "contents"
        )
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise InvalidArgumentError(
            f"tensor {quoted(name)}: {datatype} values belong in contents.{field}, not "
            f"contents.{others[0]}"
        )
    return _shape(name, _proto_values(name, datatype, list(getattr(contents, field))), shape)


def _kserve_tensors(tensors: Any, raw: Any, what: str) -> Named:
    """The tensors of a ModelInferRequest (``what`` = "input") or ModelInferResponse."""
    if raw and len(raw) != len(tensors):
        raise InvalidArgumentError(
            f"raw_{what}_contents has {len(raw)} entries for {len(tensors)} {what}s"
        )
    out: Named = []
    seen: set[str] = set()
    for i, tensor in enumerate(tensors):
        name, shape = tensor.name, list(tensor.shape)
        if name in seen:
            raise InvalidArgumentError(f"{what} {quoted(name)} appears twice")
        seen.add(name)
        if raw and tensor.contents.ListFields():
            raise InvalidArgumentError(
                f"tensor {quoted(name)}: contents and raw_{what}_contents are both set"
            )
        if raw:
            out.append((name, _from_raw(name, tensor.datatype, raw[i], shape)))
        else:
            out.append((name, _from_contents(name, tensor.datatype, tensor.contents, shape)))
    return out


def kserve_request_inputs(request: kserve.ModelInferRequest) -> Named:
    return _kserve_tensors(request.inputs, request.raw_input_contents, "input")


def kserve_response_outputs(response: kserve.ModelInferResponse) -> Named:
    return _kserve_tensors(response.outputs, response.raw_output_contents, "output")


def kserve_datatype(name: str, arr: np.ndarray) -> str:
    datatype = _KSERVE_OF_NP.get(arr.dtype)
    if datatype is None:
        raise _unsupported(name, arr.dtype)
    return datatype


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


#: Every typed value field of a TensorProto.
_TF_VALUE_FIELDS = frozenset(
    f.name for f in tensor_pb2.TensorProto.DESCRIPTOR.fields if f.name.endswith("_val")
)


def tf_to_array(name: str, tensor: tensor_pb2.TensorProto) -> np.ndarray:
    spec = TF_DTYPES.get(tensor.dtype)
    dtype_name = (
        types_pb2.DataType.Name(tensor.dtype)
        if tensor.dtype in types_pb2.DataType.values()
        else str(tensor.dtype)
    )
    if spec is None:
        raise _unsupported(name, dtype_name)
    dtype, field = spec
    if tensor.tensor_shape.unknown_rank:
        raise InvalidArgumentError(
            f"tensor {quoted(name)}: tensor_shape has unknown_rank; a tensor value needs its shape"
        )
    shape = [d.size for d in tensor.tensor_shape.dim]
    others = [f.name for f, _ in tensor.ListFields() if f.name in _TF_VALUE_FIELDS - {field}]
    if others:
        raise InvalidArgumentError(
            f"tensor {quoted(name)}: {dtype_name} values belong in {field}"
            f"{' or tensor_content' if dtype.kind != 'O' else ''}, not {others[0]}"
        )
    if tensor.tensor_content:
        if dtype.kind == "O":
            raise InvalidArgumentError(
                f"tensor {quoted(name)}: {dtype_name} values belong in string_val, not "
                "tensor_content"
            )
        size = len(tensor.tensor_content)
        if size % dtype.itemsize:
            raise InvalidArgumentError(
                f"tensor {quoted(name)}: tensor_content of {_bytes_of(size)} is not a multiple "
                f"of the {_bytes_of(dtype.itemsize)} of one {dtype_name}"
            )
        arr = np.frombuffer(tensor.tensor_content, dtype=dtype.newbyteorder("<")).astype(
            dtype, copy=False
        )
        return _shape(name, arr, shape, broadcast=False)
    values = list(getattr(tensor, field))
    if field == "half_val":
        if values and (min(values) < 0 or max(values) > 0xFFFF):
            bad = next(v for v in values if not 0 <= v <= 0xFFFF)
            raise InvalidArgumentError(
                f"tensor {quoted(name)}: half_val {bad} is not a 16-bit pattern (0 to 65535)"
            )
        arr = np.array(values, dtype=np.uint16).view(np.float16)
    else:
        arr = _proto_values(name, _KSERVE_OF_NP[dtype], values)
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


_JSON_FIELDS = ("name", "shape", "datatype", "data")


def _not_a_request(detail: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        'payload is not a JSON tensor request {"inputs": [{"name", "shape", "datatype", '
        f'"data"}}]}}: {detail}'
    )


def json_to_tensors(payload: bytes) -> Named:
    """``{"inputs": [{"name", "shape", "datatype", "data"}]}`` -> named arrays, every value
    checked to fit its datatype (:func:`modelgate_client.tensors.typed_array`)."""
    try:
        doc = json.loads(payload or b"{}")
    except RecursionError:
        raise _not_a_request("JSON nested too deeply") from None
    except ValueError as err:  # also bytes that are not UTF-8, and over-long integers
        raise _not_a_request(f"{type(err).__name__}: {capped(str(err))}") from None
    items = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise _not_a_request('"inputs" is not a list')
    out: Named = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or any(key not in item for key in _JSON_FIELDS):
            raise _not_a_request(f"input {shown(item)} lacks one of {', '.join(_JSON_FIELDS)}")
        name, datatype, shape = item["name"], item["datatype"], item["shape"]
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise _not_a_request(f"name {shown(name)} or datatype {shown(datatype)} is not text")
        if name in seen:
            raise InvalidArgumentError(f"input {quoted(name)} appears twice")
        seen.add(name)
        datatype = datatype.upper()
        _numpy_dtype(name, datatype)
        if not isinstance(shape, list) or not all(type(d) is int for d in shape):
            raise InvalidArgumentError(
                f"tensor {quoted(name)}: shape {shown(shape)} is not a list of integers"
            )
        out.append((name, _shape(name, _checked(name, datatype, item["data"]), shape)))
    return out


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
            f"model {quoted(model)} has no output {quoted(missing[0])} (it returned "
            f"{shown(sorted(tensors))})"
        )
    return [(n, tensors[n]) for n in names]
