"""Tiny protobuf wire helpers: parse with a caller-facing error, and append a field to
serialized bytes instead of re-encoding.

Appending a serialized field to a message is protobuf's documented merge: a later scalar
wins, a later sub-message merges. The gateway uses it to pin the version it chose onto a
request it otherwise forwards untouched.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from gateway.errors import InvalidArgumentError


def parse(cls: Any, data: bytes, what: str) -> Any:
    """Parse ``data`` as ``cls``; INVALID_ARGUMENT naming ``what`` if it does not parse."""
    try:
        return cls.FromString(data)
    except (DecodeError, ValueError) as err:
        raise InvalidArgumentError(f"{what} does not parse as protobuf: {err}") from None


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(field: int, data: bytes) -> bytes:
    return varint((field << 3) | 2) + varint(len(data)) + data


def varint_field(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)
