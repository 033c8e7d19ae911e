"""The protocol-buffer wire format, decoded by hand: what TF checkpoint indexes (``BundleEntryProto``) and Caffe
models (``NetParameter``) are written in. No ``.proto`` file or generated code is needed: a message is a
sequence of (field number, wire type, value) records (https://protobuf.dev/programming-guides/encoding/)."""
from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
Field = tuple[int, int, "int | memoryview"]


class WireError(ValueError):
    """Bytes that are not a well-formed protocol-buffer message."""


def read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """The unsigned varint at ``pos`` and the position after it."""
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise WireError("a varint runs past the end of the message")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise WireError("a varint is longer than 10 bytes")


def fields(buf: bytes | memoryview) -> Iterator[Field]:
    """Each field of one message: (number, wire type, value); the value is an ``int`` for varints and fixed
    32/64-bit fields (raw bits: see :func:`as_float`), a ``memoryview`` of the payload for length-delimited ones."""
    buf = memoryview(buf)
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, kind = key >> 3, key & 7
        if kind == VARINT:
            value, pos = read_varint(buf, pos)
        elif kind == FIXED64:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif kind == FIXED32:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        elif kind == LENGTH:
            size, pos = read_varint(buf, pos)
            if pos + size > len(buf):
                raise WireError(f"field {number} declares {size} bytes but the message ends before")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise WireError(f"field {number} has wire type {kind}, which no message here uses (groups, or not "
                            f"a protocol buffer)")
        if pos > len(buf):
            raise WireError(f"field {number} runs past the end of the message")
        yield number, kind, value


def as_float(bits: int) -> float:
    """A FIXED32 field's bits as the float32 it holds."""
    return struct.unpack("<f", bits.to_bytes(4, "little"))[0]


def packed_varints(kind: int, value: int | memoryview) -> list[int]:
    """A repeated integer field's values from one record: packed (LENGTH) or one unpacked varint."""
    if kind == VARINT:
        return [value]  # type: ignore[list-item]
    out, pos = [], 0
    while pos < len(value):  # type: ignore[arg-type]
        item, pos = read_varint(value, pos)  # type: ignore[arg-type]
        out.append(item)
    return out


def packed_floats(kind: int, value: int | memoryview, dtype: str = "<f4") -> np.ndarray:
    """A repeated float (``<f4``) or double (``<f8``) field's values from one record: packed or one unpacked."""
    if kind == LENGTH:
        return np.frombuffer(value, dtype=dtype)  # type: ignore[arg-type]
    size = 4 if dtype == "<f4" else 8
    return np.frombuffer(int(value).to_bytes(size, "little"), dtype=dtype)  # type: ignore[arg-type]
