"""numpy helpers for the gateway's JSON tensor codec (models without a plugin).

Request payload (``content_type="application/json"``)::

    {"inputs": [{"name": "INPUT0", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}

Response payload: ``{"model_name", "model_version", "outputs": [...]}`` with the same tensor
fields. Datatypes use the KServe v2 names (``FP32``, ``INT64``, ``BYTES``, ...); ``data`` is
the flattened tensor in row-major order. BYTES tensors travel as JSON strings (UTF-8).

Every value must fit its datatype (:func:`typed_array`, the rule the gateway applies too):
integer datatypes take integers within their range (no floats, no booleans), BOOL takes
booleans, FP16/FP32/FP64 take numbers rounded to the nearest representable value (refused
beyond the largest finite one; NaN and Infinity pass as themselves) and BYTES takes text.
"""

from __future__ import annotations

import json
import sys
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

#: Most characters of a caller's value (or name) echoed in an error message.
ECHO_LIMIT = 64
_ELLIPSIS = "\u2026"


def shown(value: object) -> str:
    """``value`` as it would be written in JSON (repr otherwise), cut to :data:`ECHO_LIMIT`
    characters with an ellipsis: error messages stay short whatever the caller sent."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 192:
        # NOTE: never convert a huge integer to text (Python refuses beyond 4300 digits)
        return f"{'-' if value < 0 else ''}<an integer of {value.bit_length()} bits>"
    if isinstance(value, str) and len(value) > ECHO_LIMIT:
        value = value[:ECHO_LIMIT]  # (json.dumps of a huge string first would copy it whole)
    try:
        return capped(json.dumps(value))
    except (TypeError, ValueError):
        return capped(repr(value))


def capped(text: str | bytes, limit: int = ECHO_LIMIT) -> str:
    """``text`` as it may appear in an error message: at most ``limit`` UTF-8 bytes.

    A longer text is cut at a character boundary and ends with an ellipsis; bytes and lone
    surrogates are made valid UTF-8 (U+FFFD, ``?``), so the message always encodes. The one
    rule for every value echoed into a message, by this client and by the gateway.
    """
    as_text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    data = as_text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode("utf-8")
    cut = limit - len(_ELLIPSIS.encode())
    return data[:cut].decode("utf-8", "ignore") + _ELLIPSIS


def quoted(name: str) -> str:
    """A name as a Python literal (``'INPUT0'``), cut like :func:`capped`."""
    short = capped(name)
    return repr(short) if short == name else repr(short[:-1]) + _ELLIPSIS


def _integer_range(dtype: np.dtype[Any]) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _kinds(values: list[Any]) -> set[str]:
    """The kinds of Python/numpy scalars in ``values``: bool, int, float, text, other."""
    kinds = set()
    for cls in set(map(type, values)):
        if issubclass(cls, bool | np.bool_):
            kinds.add("bool")
        elif issubclass(cls, int | np.integer):
            kinds.add("int")
        elif issubclass(cls, float | np.floating):
            kinds.add("float")
        elif issubclass(cls, str | bytes):
            kinds.add("text")
        elif issubclass(cls, list | tuple):
            kinds.add("nested")
        else:
            kinds.add("other")
    return kinds


def _first_not(wanted: set[str], values: list[Any]) -> Any:
    """The first of ``values`` whose kind is not in ``wanted``."""
    return next(v for v in values if _kinds([v]) - wanted)


def typed_array(name: str, datatype: str, data: Any) -> np.ndarray:
    """``data`` (a JSON/Python scalar or nested lists) as a flat array of ``datatype``.

    Every value is checked against the datatype, none is wrapped, truncated or turned into
    infinity: ``ValueError`` names the tensor, the first value that does not fit and what
    the datatype takes.
    """
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise ValueError(f"tensor {quoted(name)}: unknown datatype {shown(datatype)}")
    values = np.array(data, dtype=object).reshape(-1).tolist()
    kinds = _kinds(values)
    if "nested" in kinds:
        raise ValueError(
            f"tensor {quoted(name)}: data is not a rectangular array of values "
            "(ragged, or nested more than 32 levels)"
        )
    if datatype == "BYTES":
        if kinds - {"text"}:
            bad = _first_not({"text"}, values)
            raise ValueError(
                f"tensor {quoted(name)}: value {shown(bad)} is not text (BYTES: strings)"
            )
        out = np.empty(len(values), dtype=object)
        out[:] = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
        return out
    if datatype == "BOOL":
        if kinds - {"bool"}:
            bad = _first_not({"bool"}, values)
            raise ValueError(
                f"tensor {quoted(name)}: value {shown(bad)} is not a boolean (BOOL: true or false)"
            )
        return np.array(values, dtype=dtype)
    if dtype.kind in "iu":
        low, high = _integer_range(dtype)
        range_text = f"{datatype}: integers from {low} to {high}"
        if kinds - {"int"}:
            bad = _first_not({"int"}, values)
            raise ValueError(
                f"tensor {quoted(name)}: value {shown(bad)} is not an integer ({range_text})"
            )
        if values and (min(values) < low or max(values) > high):
            bad = next(v for v in values if not low <= v <= high)
            raise ValueError(
                f"tensor {quoted(name)}: value {shown(bad)} is out of range ({range_text})"
            )
        return np.array(values, dtype=dtype)
    # FP16, FP32, FP64
    largest = float(np.finfo(dtype).max)
    range_text = f"{datatype}: numbers from {-largest:.7g} to {largest:.7g}"
    if kinds - {"int", "float"}:
        bad = _first_not({"int", "float"}, values)
        raise ValueError(
            f"tensor {quoted(name)}: value {shown(bad)} is not a number ({range_text})"
        )
    try:
        wide = np.array(values, dtype=np.float64)
    except OverflowError:
        bad = next(v for v in values if isinstance(v, int) and abs(v) > sys.float_info.max)
        raise ValueError(
            f"tensor {quoted(name)}: value {shown(bad)} is out of range ({range_text})"
        ) from None
    with np.errstate(over="ignore"):
        out = wide.astype(dtype)
    overflowed = np.isinf(out) & np.isfinite(wide)
    if overflowed.any():
        bad = values[int(overflowed.argmax())]
        raise ValueError(
            f"tensor {quoted(name)}: value {shown(bad)} is out of range ({range_text})"
        )
    return out


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


def _from_python(name: str, value: Any) -> np.ndarray:
    """Python values (scalars, nested lists) as the array numpy infers, every value checked
    against the inferred datatype: integers numpy could hold only as floats or objects, and
    booleans or numbers among other values, are refused instead of converted."""
    try:
        inferred = np.asarray(value)
    except ValueError as err:
        raise ValueError(f"tensor {quoted(name)}: {err}") from None
    kinds = _kinds(np.array(value, dtype=object).reshape(-1).tolist())
    if "text" in kinds:
        datatype = "BYTES"
    elif kinds == {"int"} and inferred.dtype.kind not in "iu":
        datatype = "INT64"  # beyond INT64 and UINT64: typed_array names the value
    elif inferred.dtype.kind == "O":
        # numbers among other values: the datatype they ask for, which names the others
        datatype = next(
            (dt for kind, dt in (("float", "FP64"), ("int", "INT64"), ("bool", "BOOL"))
             if kind in kinds),
            "BYTES",
        )  # fmt: skip
    else:
        datatype = datatype_of(inferred)
    return typed_array(name, datatype, value).reshape(inferred.shape)


def _text(item: bytes) -> str:
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("BYTES element is not UTF-8; the JSON codec carries text only") from None


def tensor_to_json(name: str, value: npt.ArrayLike) -> dict[str, Any]:
    """One ``{"name", "shape", "datatype", "data"}`` entry for ``value``.

    A numpy array keeps its dtype; Python values get the datatype numpy infers (``INT64``,
    ``FP64``, ``BOOL`` or ``BYTES``), and a value that does not fit it is refused.
    """
    array = value if isinstance(value, np.ndarray | np.generic) else _from_python(name, value)
    array = np.asarray(array)
    datatype = datatype_of(array)
    data: list[Any]
    if datatype == "BYTES":
        data = [_text(x) for x in typed_array(name, datatype, array)]
    else:
        data = array.reshape(-1).tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def encode_inputs(inputs: Mapping[str, npt.ArrayLike]) -> bytes:
    """``{"INPUT0": np.array(...)}`` -> a JSON request payload (names kept in order).

    Pass arrays with the dtype the model expects (``np.float32`` for ``FP32``): a plain
    Python list becomes ``INT64`` or ``FP64``.
    """
    return json.dumps({"inputs": [tensor_to_json(n, v) for n, v in inputs.items()]}).encode()


def _shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or _kinds(shape) - {"int"} or any(d < 0 for d in shape):
        raise ValueError(
            f"tensor {quoted(name)}: shape {shown(shape)} is not a list of non-negative integers"
        )
    return shape


def tensor_from_json(item: Mapping[str, Any]) -> tuple[str, np.ndarray]:
    """One JSON tensor entry -> ``(name, array)`` with its datatype and shape, every value
    checked against the datatype (:func:`typed_array`)."""
    try:
        name = str(item["name"])
        datatype = str(item["datatype"]).upper()
        shape = item["shape"]
        data = item["data"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not a JSON tensor {{name, shape, datatype, data}}: {err}") from None
    flat = typed_array(name, datatype, data)
    shape = _shape(name, shape)
    if flat.size != int(np.prod(shape, dtype=object)):
        raise ValueError(
            f"tensor {quoted(name)}: {flat.size} values do not fill shape {shown(shape)}"
        )
    return name, flat.reshape(shape)


def decode_outputs(payload: bytes) -> dict[str, np.ndarray]:
    """A JSON response payload -> ``{"OUTPUT0": np.ndarray}`` (shape and dtype restored)."""
    try:
        doc = json.loads(payload)
        items = doc["outputs"]
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise ValueError(
            f'payload is not a JSON tensor response {{"outputs": [...]}}: {err}'
        ) from None
    return dict(tensor_from_json(item) for item in items)
