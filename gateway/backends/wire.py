"""Tiny protobuf wire helpers: append a field to serialized bytes instead of re-encoding.

Appending a serialized field to a message is protobuf's documented merge: a later scalar
wins, a later sub-message merges. The gateway uses it to pin the version it chose onto a
request it otherwise forwards untouched.
"""

from __future__ import annotations


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
