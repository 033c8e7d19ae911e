"""Reading a ``.caffemodel`` without Caffe: the file is one ``NetParameter`` protocol buffer whose layers carry
their parameters as ``BlobProto`` messages (https://github.com/BVLC/caffe, ``src/caffe/proto/caffe.proto``; field
numbers from there). Both layer formats are read: ``layer`` (``LayerParameter``, Caffe since 2015: DeepLab v2's
models) and the older ``layers`` (``V1LayerParameter``: DeepLab v1's DeepLab-LargeFOV).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .wire import LENGTH, WireError, as_float, fields, packed_floats, packed_varints

# V1LayerParameter's LayerType enum: the types that carry blobs or that a DeepLab prototxt lists.
V1_TYPES = {3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout", 14: "InnerProduct", 17: "Pooling", 18: "ReLU",
            20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split", 25: "Eltwise", 36: "Silence"}


class CaffeFormatError(ValueError):
    """A file that is not a readable ``.caffemodel``."""


@dataclass
class CaffeLayer:
    """One layer: its ``name``, ``type`` (``"Convolution"``, ``"BatchNorm"``, ...), ``blobs`` (float32 arrays in
    Caffe's layout: convolutions [out, in, kh, kw]) and the settings read from its parameters (``stride``,
    ``pad``, ``dilation``, ``kernel_size``, ``group``, ``bias_term``, ``eps``) where the file holds them."""

    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


def _blob(message: memoryview) -> np.ndarray:
    legacy = {1: 1, 2: 1, 3: 1, 4: 1}  # num, channels, height, width (pre-BlobShape files)
    shape: list[int] | None = None
    data: list[np.ndarray] = []
    for number, kind, value in fields(message):
        if number in legacy and kind != LENGTH:
            legacy[number] = int(value)  # type: ignore[arg-type]
        elif number == 5:  # data: repeated float
            data.append(packed_floats(kind, value))
        elif number == 8:  # double_data
            data.append(packed_floats(kind, value, "<f8").astype(np.float32))
        elif number == 7:  # BlobShape: repeated int64 dim
            shape = [d for n, k, v in fields(value) if n == 1 for d in packed_varints(k, v)]  # type: ignore[arg-type]
    values = np.concatenate(data) if data else np.zeros(0, np.float32)
    dims = shape if shape is not None else [legacy[1], legacy[2], legacy[3], legacy[4]]
    if int(np.prod(dims, dtype=np.int64)) != values.size:
        raise CaffeFormatError(f"a blob of shape {dims} holds {values.size} values")
    return values.reshape(dims).astype(np.float32, copy=False)


def _conv_params(message: memoryview, v1: bool) -> dict[str, Any]:
    """ConvolutionParameter: num_output 1, bias_term 2, pad 3, kernel_size 4, group 5, stride 6, dilation 18 (in
    DeepLab v1's Caffe, deeplab-public, the dilation is ``hole``, field 17, and 18 is ``hole_h``)."""
    dilation = 17 if v1 else 18
    names = {1: "num_output", 2: "bias_term", 3: "pad", 4: "kernel_size", 5: "group", 6: "stride",
             dilation: "dilation"}
    params: dict[str, Any] = {}
    for number, kind, value in fields(message):
        if number in (3, 4, 6, dilation):
            params.setdefault(names[number], []).extend(packed_varints(kind, value))
        elif number in names:
            params[names[number]] = int(value)  # type: ignore[arg-type]
    return params


def _pool_params(message: memoryview) -> dict[str, Any]:
    """PoolingParameter: pool 1 (0 MAX, 1 AVE), kernel_size 2, stride 3, pad 4."""
    names = {1: "pool", 2: "kernel_size", 3: "stride", 4: "pad"}
    return {names[n]: int(v) for n, _, v in fields(message) if n in names}  # type: ignore[arg-type]


def _layer(message: memoryview, v1: bool) -> CaffeLayer:
    # LayerParameter: name 1, type 2, blobs 7, convolution_param 106, pooling_param 121, batch_norm_param 139.
    # V1LayerParameter: name 4, type 5 (enum), blobs 6, convolution_param 10, pooling_param 19.
    name_f, type_f, blobs_f, conv_f, pool_f = (4, 5, 6, 10, 19) if v1 else (1, 2, 7, 106, 121)
    layer = CaffeLayer("", "")
    for number, kind, value in fields(message):
        if number == name_f:
            layer.name = bytes(value).decode()  # type: ignore[arg-type]
        elif number == type_f:
            kind_id = int(value) if v1 else 0  # type: ignore[arg-type]
            layer.type = V1_TYPES.get(kind_id, f"V1 type {kind_id}") if v1 else bytes(value).decode()  # type: ignore
        elif number == blobs_f:
            layer.blobs.append(_blob(value))  # type: ignore[arg-type]
        elif number == conv_f:
            layer.params.update(_conv_params(value, v1))  # type: ignore[arg-type]
        elif number == pool_f:
            layer.params.update(_pool_params(value))  # type: ignore[arg-type]
        elif number == 139 and not v1:  # BatchNormParameter: eps 3 (float)
            layer.params.update({"eps": as_float(v) for n, _, v in fields(value) if n == 3})  # type: ignore[arg-type]
    return layer


def read_caffemodel(path: str | Path) -> list[CaffeLayer]:
    """The layers of a ``.caffemodel``, in the file's order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass the released .caffemodel file")
    layers = []
    try:
        for number, kind, value in fields(path.read_bytes()):
            if kind == LENGTH and number in (2, 100):  # layers (V1LayerParameter), layer (LayerParameter)
                layers.append(_layer(value, v1=number == 2))  # type: ignore[arg-type]
    except WireError as err:
        raise CaffeFormatError(f"{path} is not a .caffemodel (a NetParameter protocol buffer): {err}") from err
    if not layers:
        raise CaffeFormatError(f"{path} holds no layers: not a .caffemodel (a prototxt is text; pass the weights)")
    return layers
