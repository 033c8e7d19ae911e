"""Writing ``.caffemodel`` files for the tests: a ``NetParameter`` protocol buffer encoded by hand (field numbers
from Caffe's ``caffe.proto``), in the new ``layer`` format (DeepLab v2) or the old ``layers`` one (DeepLab v1)."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

V1_TYPE_IDS = {"Convolution": 4, "Dropout": 6, "Pooling": 17, "ReLU": 18}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _blob(array: np.ndarray, legacy: bool) -> bytes:
    data = _field(5, np.ascontiguousarray(array, dtype="<f4").tobytes())
    if legacy:  # num, channels, height, width: [1, 1, 1, n] for a vector
        dims = ([1] * (4 - array.ndim) + list(array.shape))
        return b"".join(_int(i + 1, d) for i, d in enumerate(dims)) + data
    return _field(7, _field(1, b"".join(_varint(d) for d in array.shape))) + data


@dataclass
class Layer:
    """A layer to write: name, type, blobs, and its convolution / pooling / BatchNorm settings."""

    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)
    conv: dict[str, int] = field(default_factory=dict)  # num_output, kernel_size, stride, pad, dilation
    eps: float | None = None


def _layer(layer: Layer, v1: bool) -> bytes:
    if v1:  # V1LayerParameter: name 4, type 5 (enum), blobs 6, convolution_param 10
        out = _field(4, layer.name.encode()) + _int(5, V1_TYPE_IDS[layer.type])
        out += b"".join(_field(6, _blob(b, legacy=True)) for b in layer.blobs)
        conv_field = 10
    else:  # LayerParameter: name 1, type 2, blobs 7, convolution_param 106, batch_norm_param 139
        out = _field(1, layer.name.encode()) + _field(2, layer.type.encode())
        out += b"".join(_field(7, _blob(b, legacy=False)) for b in layer.blobs)
        conv_field = 106
        if layer.eps is not None:
            out += _field(139, _varint(3 << 3 | 5) + struct.pack("<f", layer.eps))
    if layer.conv:  # DeepLab v1's Caffe calls the dilation "hole" (field 17)
        numbers = {"num_output": 1, "pad": 3, "kernel_size": 4, "stride": 6, "dilation": 17 if v1 else 18}
        out += _field(conv_field, b"".join(_int(numbers[k], v) for k, v in layer.conv.items()))
    return out


def write_caffemodel(path: Path, layers: list[Layer], v1: bool = False) -> Path:
    """``layers`` as a ``.caffemodel`` at ``path`` (``v1``: the old ``layers`` format, legacy blob shapes)."""
    net = _field(1, b"synthetic") + b"".join(_field(2 if v1 else 100, _layer(layer, v1)) for layer in layers)
    path.write_bytes(net)
    return path
