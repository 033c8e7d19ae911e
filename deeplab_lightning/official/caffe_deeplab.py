"""The released Caffe models of DeepLab v1 (DeepLab-LargeFOV) and v2 (ResNet-101, ASPP-L, MSC) as this project's
networks, by the layer names of their published prototxts.

DeepLab-LargeFOV (``config/DeepLab-LargeFOV/test.prototxt``): ``conv1_1`` ... ``conv5_3``, ``fc6`` (3x3, hole 12,
1024), ``fc7`` (1x1, 1024), ``fc8_voc12``; 3x3 max pools (pool1-3 stride 2, pool4-5 stride 1), ``pool5a`` (3x3
average, stride 1), Caffe's ceil-mode pooling, the ``Interp`` zoom by 8. DeepLab v2 ResNet-101 (its layer list as
converted by DrSleep/tensorflow-deeplab-resnet and kazuto1011/deeplab-pytorch): ``conv1`` / ``bn_conv1`` /
``scale_conv1``, ``res{2..5}{a,b,c,b1..b22}_branch{1,2a,2b,2c}`` each with ``bn...`` and ``scale...``,
``fc1_voc12_c0..c3`` (3x3 at rates 6/12/18/24, summed); MSC copies every layer for the scales 0.75 and 0.5 under
``_res075`` / ``_res05`` names sharing the weights. Both take BGR images minus the mean pixel (104.008,
116.669, 122.675) in [0, 255]: the first convolution's input channels are reversed to read RGB.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import architectures_only, create_model
from .caffe_reader import CaffeLayer
from .mapping import MappingError, Rule

CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)
CAFFE_INPUT_RANGE = {"pixel_mean": list(CAFFE_MEAN_BGR[::-1]), "pixel_std": [1.0, 1.0, 1.0]}
MSC_SUFFIXES = ("_res075", "_res05")  # the scaled copies of DeepLab v2's MSC prototxt
VGG_CONVS = {"conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7, "conv3_1": 10, "conv3_2": 12, "conv3_3": 14,
             "conv4_1": 17, "conv4_2": 19, "conv4_3": 21, "conv5_1": 24, "conv5_2": 26, "conv5_3": 28}


def blob_tensors(layers: list[CaffeLayer], where: str) -> tuple[dict[str, np.ndarray], dict[str, CaffeLayer], int]:
    """Every blob as ``"<layer>/<index>"``, the layers by name, and the number of MSC copies set aside: a
    ``_res075`` / ``_res05`` layer must hold its base layer's blobs (the prototxt shares them), else it is named."""
    by_name = {layer.name: layer for layer in layers}
    tensors, copies = {}, 0
    for layer in layers:
        base = next((layer.name[:-len(s)] for s in MSC_SUFFIXES if layer.name.endswith(s)), None)
        if base is not None and layer.blobs:
            original = by_name.get(base)
            if original is None or len(original.blobs) != len(layer.blobs) or not all(
                    np.array_equal(a, b) for a, b in zip(original.blobs, layer.blobs)):
                raise MappingError(f"{where}: layer {layer.name} holds other weights than {base}; DeepLab v2's MSC "
                                   f"copies share them")
            copies += 1
            continue
        for i, blob in enumerate(layer.blobs):
            tensors[f"{layer.name}/{i}"] = blob
    return tensors, by_name, copies


def describe(by_name: dict[str, CaffeLayer], where: str) -> tuple[str, int, str]:
    """``(kind, num_classes, classifier)``: ``"v1_largefov"`` (classifier: the ``fc8_*`` layer) or
    ``"v2_resnet101"`` (classifier: the ASPP-L prefix, ``fc1_voc12``), from the layer names."""
    aspp = [n[:-len("_c0")] for n in by_name if n.startswith("fc1_") and n.endswith("_c0") and by_name[n].blobs]
    if aspp:
        if "res5c_branch2c" not in by_name:
            raise MappingError(f"{where} has ASPP-L branches ({aspp[0]}_c0..c3) but no ResNet-101 (res5c_branch2c): "
                               f"DeepLab v2's VGG-16 model is not converted")
        return "v2_resnet101", int(by_name[f"{aspp[0]}_c0"].blobs[0].shape[0]), aspp[0]
    fc8 = [n for n in by_name if n.startswith("fc8") and by_name[n].blobs]
    if "conv5_3" in by_name and "fc6" in by_name and len(fc8) == 1:
        return "v1_largefov", int(by_name[fc8[0]].blobs[0].shape[0]), fc8[0]
    raise MappingError(f"{where} is neither DeepLab-LargeFOV (conv5_3, fc6, fc7, fc8_*) nor DeepLab v2 ResNet-101 "
                       f"(res5c, fc1_*_c0..c3); its layers: {', '.join(list(by_name)[:8])}")


def build(kind: str, num_classes: int, bn_eps: float | None = None) -> tuple[nn.Module, str, dict[str, Any]]:
    """The project's network of a released model (``describe``'s kind) on the meta device (names, shapes and
    geometry), its arch and model_kwargs."""
    if kind == "v1_largefov":
        arch = "deeplabv1_vgg16_largefov"
        kwargs: dict[str, Any] = {"upsampling": "zoom", "backbone_kwargs": {
            **CAFFE_INPUT_RANGE, "ceil_mode": True, "pool5a": True}}
    else:
        arch = "deeplabv2_resnet101"
        kwargs = {"upsampling": "zoom", "backbone_kwargs": {**CAFFE_INPUT_RANGE, "layout": "caffe"}}
        if bn_eps is not None and bn_eps != 1e-5:
            kwargs["backbone_kwargs"]["bn_eps"] = bn_eps
    with architectures_only(), torch.device("meta"):  # names, shapes and geometry only: no memory, no time
        net = create_model(arch, num_classes, output_stride=8, **kwargs)
    return net, arch, kwargs


def _conv_rules(path: str, layer: str, first: bool = False) -> dict[str, Rule]:
    """A convolution's weight (and bias) from a Caffe layer's blobs; the first conv reads RGB, Caffe BGR."""
    weight = (lambda w: w[:, ::-1]) if first else (lambda w: w)
    return {f"{path}.weight": Rule((f"{layer}/0",), weight), f"{path}.bias": Rule((f"{layer}/1",),
                                                                                 lambda b: b.reshape(-1))}


def _bn_rules(path: str, bn: str, scale: str) -> dict[str, Rule]:
    """A BatchNorm from Caffe's BatchNorm (mean * s, variance * s, s) and Scale (gamma, beta) layers."""
    def stat(value: np.ndarray, factor: np.ndarray) -> np.ndarray:
        s = float(factor.reshape(-1)[0])
        return value.reshape(-1) * (0.0 if s == 0 else 1.0 / s)

    return {f"{path}.running_mean": Rule((f"{bn}/0",), stat, shared=(f"{bn}/2",)),
            f"{path}.running_var": Rule((f"{bn}/1",), stat, shared=(f"{bn}/2",)),
            f"{path}.weight": Rule((f"{scale}/0",), lambda g: g.reshape(-1)),
            f"{path}.bias": Rule((f"{scale}/1",), lambda b: b.reshape(-1))}


def _unit_name(stage: int, unit: int, units: int) -> str:
    """MSRA's unit names: res2a, res2b, res2c; res3a, res3b1..b3; res4a, res4b1..b22 (ResNet-101)."""
    if unit == 0:
        return f"res{stage}a"
    return f"res{stage}{'abc'[unit]}" if units <= 3 else f"res{stage}b{unit}"


def v1_rules(fc8: str) -> tuple[dict[str, Rule], dict[str, str]]:
    """DeepLab-LargeFOV's rules (``fc8``: its classifier layer) and each convolution's layer (by module path)."""
    layers = {f"backbone.features.{i}": name for name, i in VGG_CONVS.items()}
    layers.update({"classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": fc8})
    rules: dict[str, Rule] = {}
    for path, layer in layers.items():
        rules.update(_conv_rules(path, layer, first=layer == "conv1_1"))
    return rules, layers


def v2_rules(net: nn.Module, head: str) -> tuple[dict[str, Rule], dict[str, str]]:
    """DeepLab v2 ResNet-101's rules (``head``: the ASPP-L layers' prefix, ``fc1_voc12``) and each convolution's
    layer name (by module path)."""
    rules: dict[str, Rule] = {}
    layers = {"backbone.conv1": "conv1"}
    rules["backbone.conv1.weight"] = Rule(("conv1/0",), lambda w: w[:, ::-1])
    rules.update(_bn_rules("backbone.bn1", "bn_conv1", "scale_conv1"))
    for stage in range(2, 6):
        units = getattr(net.backbone, f"layer{stage - 1}")
        for u, unit in enumerate(units):
            name = _unit_name(stage, u, len(units))
            parts = [(f"conv{k}", f"bn{k}", f"branch2{'abc'[k - 1]}") for k in (1, 2, 3)]
            if unit.downsample is not None:
                parts.append(("downsample.0", "downsample.1", "branch1"))
            for conv, bn, branch in parts:
                path = f"backbone.layer{stage - 1}.{u}"
                layers[f"{path}.{conv}"] = f"{name}_{branch}"
                rules[f"{path}.{conv}.weight"] = Rule((f"{name}_{branch}/0",))
                rules.update(_bn_rules(f"{path}.{bn}", f"bn{name[3:]}_{branch}", f"scale{name[3:]}_{branch}"))
    for i in range(len(net.aspp.branches)):
        layers[f"aspp.branches.{i}"] = f"{head}_c{i}"
        rules.update(_conv_rules(f"aspp.branches.{i}", f"{head}_c{i}"))
    return rules, layers


def check_geometry(net: nn.Module, layers: dict[str, str], by_name: dict[str, CaffeLayer], where: str) -> int:
    """Each convolution's stride, padding, dilation and kernel as the Caffe model states them (where its layer
    holds them); returns how many layers were checked. A difference means the released network is not the one
    built, and is named."""
    modules, checked = dict(net.named_modules()), 0
    for path, name in layers.items():
        params, conv = by_name[name].params, modules[path]
        for key, ours in (("stride", conv.stride[0]), ("pad", conv.padding[0]), ("dilation", conv.dilation[0]),
                          ("kernel_size", conv.kernel_size[0])):
            theirs = params.get(key)
            if theirs is None or theirs == []:
                continue
            theirs = theirs[0] if isinstance(theirs, list) else theirs
            if theirs != ours:
                raise MappingError(f"{where}: layer {name} has {key} {theirs}, the converted network's {path} "
                                   f"{ours}: the file is not the released model this converter knows")
        checked += any(key in params for key in ("stride", "pad", "dilation", "kernel_size"))
    return checked
