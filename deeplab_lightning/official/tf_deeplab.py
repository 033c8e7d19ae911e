"""TF DeepLab checkpoints (tensorflow/models ``research/deeplab``, its model zoo) as this project's networks.

Which network a checkpoint holds is read from its variables: the backbone (``MobilenetV2/``, ``xception_65/``,
``resnet_v1_101/`` with the beta stem ``conv1_1..3``), MobileNetV2's depth multiplier, the ASPP branches
(``aspp0``, ``aspp1..3``, separable or not, ``image_pooling``), the decoder (``decoder/``) and the classes
(``logits/semantic``). What a checkpoint does not store is the output stride and the atrous rates: the output
stride is chosen (the zoo trains at 16 and evaluates at 8 or 16 from the same weights) and the rates follow it as
the zoo's flags set them (6/12/18 at 16, doubled at 8).

What the converted network needs to compute TF's graph (facts read from the graph: ``/work/shared/tf_golden``'s
README and ``core/feature_extractor.py``): input in [-1, 1] (``preprocess_zero_mean_unit_range``, padding 127.5
becomes 0), BatchNorm epsilon 1e-3 in the MobileNetV2 and Xception backbones (1e-5 in ResNet-v1-beta and the
heads), TF 'SAME' padding in MobileNetV2's stride-2 layers and ResNet's max pool, and the ASPP branches
concatenated as [image pooling, aspp0, aspp1, ...] (here the image pooling comes last: the projection's input
channels are reordered). Only ``logits/semantic`` has a bias.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import architectures_only, create_model
from .mapping import MappingError, Rule, conv_hwio, depthwise_hwcm, fill, then

OPTIMIZER_SLOTS = ("Momentum", "Adam", "Adam_1", "RMSProp", "RMSProp_1", "ExponentialMovingAverage", "Adagrad",
                   "Ftrl", "Ftrl_1")
TF_INPUT_RANGE = {"pixel_mean": [127.5, 127.5, 127.5], "pixel_std": [127.5, 127.5, 127.5]}  # x / 127.5 - 1
BN_PARAMS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def is_model_variable(name: str) -> bool:
    """Whether a TF checkpoint variable is part of the model (not ``global_step`` nor an optimizer's slot)."""
    return name != "global_step" and name.rsplit("/", 1)[-1] not in OPTIMIZER_SLOTS


@dataclass
class TFDeepLab:
    """What a TF DeepLab checkpoint's variables say about its network."""

    variant: str  # the TF model_variant: mobilenet_v2, xception_65, resnet_v1_101_beta
    num_classes: int
    aspp_branches: int  # aspp1..N (atrous branches besides aspp0)
    separable_aspp: bool
    image_pooling: bool
    decoder: bool
    depth_multiplier: float = 1.0


def describe(tensors: dict[str, np.ndarray], where: str) -> TFDeepLab:
    """The network of a TF DeepLab checkpoint's model variables (see the module's docstring)."""
    if "MobilenetV2/Conv/weights" in tensors:
        variant = "mobilenet_v2"
    elif "xception_65/entry_flow/conv1_1/weights" in tensors:
        variant = "xception_65"
    elif "resnet_v1_101/conv1_1/weights" in tensors:
        variant = "resnet_v1_101_beta"
    else:
        scopes = sorted({name.split("/", 1)[0] for name in tensors})
        raise MappingError(f"{where} is not a TF DeepLab checkpoint of a backbone this project converts "
                           f"(mobilenet_v2, xception_65, resnet_v1_101_beta); its variables' scopes: "
                           f"{', '.join(scopes[:8])}")
    if "logits/semantic/weights" not in tensors:
        raise MappingError(f"{where} has no logits/semantic/weights: an ImageNet backbone checkpoint, not a "
                           f"DeepLab segmentation model")
    branches = sorted(int(m.group(1)) for name in tensors
                      if (m := re.fullmatch(r"aspp([1-9])(?:_depthwise)?/(?:depthwise_)?weights", name)))
    multiplier = 1.0
    if variant == "mobilenet_v2":  # the last block's 320 outputs times the multiplier (TF: no rounding below 1)
        multiplier = tensors["MobilenetV2/expanded_conv_16/project/weights"].shape[-1] / 320
    return TFDeepLab(variant, int(tensors["logits/semantic/weights"].shape[-1]), len(branches),
                     "aspp1_depthwise/depthwise_weights" in tensors, "image_pooling/weights" in tensors,
                     "decoder/feature_projection0/weights" in tensors, multiplier)


def model_settings(spec: TFDeepLab, output_stride: int) -> tuple[str, dict[str, Any]]:
    """The project's ``arch`` and ``model_kwargs`` for ``spec`` at ``output_stride``. The ASPP rates are left to
    the project's default (6/12/18 at output stride 16, doubled at 8: the zoo's flags), so that evaluating at
    another output stride (``--model.output_stride 8``) scales them as the zoo does."""
    kwargs: dict[str, Any] = {}
    if spec.variant == "mobilenet_v2":
        kwargs["backbone_kwargs"] = {**TF_INPUT_RANGE, "bn_eps": 1e-3, "depth_multiplier": spec.depth_multiplier,
                                     "tf_same_padding": True}
        arch = "deeplabv3plus" if spec.decoder else "deeplabv3_mobilenetv2"
        if spec.decoder:
            kwargs["backbone"] = "mobilenetv2"
        if spec.aspp_branches:  # the registry's MobileNetV2 has none (the zoo's): the rates are stated
            kwargs["atrous_rates"] = [r * 16 // output_stride for r in (6, 12, 18)]
    elif spec.variant == "xception_65":  # the project's Xception-65 is TF's: [-1, 1] input, BN epsilon 1e-3
        arch = "deeplabv3plus_xception65" if spec.decoder else "deeplabv3"
        if not spec.decoder:
            kwargs["backbone"] = "xception65"
    else:  # ResNet-v1-101-beta: [-1, 1] input is the backbone's own; multi-grid is not stored: the zoo's (1, 2, 4)
        arch = "deeplabv3plus" if spec.decoder else "deeplabv3"
        kwargs.update(backbone="resnet101_beta", multi_grid=[1, 2, 4], backbone_kwargs={"tf_same_padding": True})
    if spec.aspp_branches not in (0, 3):
        raise MappingError(f"the {spec.variant} checkpoint has {spec.aspp_branches} atrous ASPP branches; DeepLab "
                           f"has 3 (rates 6/12/18 at output stride 16) or none")
    if spec.aspp_branches and spec.separable_aspp != (spec.variant == "xception_65"):  # the registry's default
        kwargs["separable"] = spec.separable_aspp
    if not spec.image_pooling:
        kwargs["image_pooling"] = False
    return arch, kwargs


def build(spec: TFDeepLab, output_stride: int) -> tuple[nn.Module, str, dict[str, Any]]:
    """The project's network for ``spec`` at ``output_stride``, on the meta device (its names, shapes and
    geometry), its arch and model_kwargs."""
    arch, kwargs = model_settings(spec, output_stride)
    with architectures_only(), torch.device("meta"):  # names, shapes and geometry only: no memory, no time
        net = create_model(arch, spec.num_classes, output_stride=output_stride, **kwargs)
    return net, arch, kwargs


# The TF scope of each convolution / BatchNorm of the project's networks (None: not one of TF's).
def _mobilenet_scope(path: str) -> str | None:
    if re.fullmatch(r"backbone\.features\.0\.[01]", path):
        return "MobilenetV2/Conv"
    if m := re.fullmatch(r"backbone\.features\.(\d+)\.conv\.(.+)", path):
        block, part = int(m.group(1)), m.group(2)
        name = "expanded_conv" if block == 1 else f"expanded_conv_{block - 1}"
        parts = ({"0.0": "depthwise", "0.1": "depthwise", "1": "project", "2": "project"} if block == 1 else
                 {"0.0": "expand", "0.1": "expand", "1.0": "depthwise", "1.1": "depthwise", "2": "project",
                  "3": "project"})
        return f"MobilenetV2/{name}/{parts[part]}" if part in parts else None
    return None


def _xception_scope(path: str, num_blocks: int) -> str | None:
    if m := re.fullmatch(r"backbone\.stem\.(\d)\.(conv|bn)", path):
        return f"xception_65/entry_flow/conv1_{int(m.group(1)) + 1}"
    m = re.fullmatch(r"backbone\.blocks\.(\d+)\.(shortcut\.(?:conv|bn)|stack\.conv(\d)\.(conv|bn)_(dw|pw))", path)
    if not m:
        return None
    block = int(m.group(1))
    if block < 3:
        unit = f"entry_flow/block{block + 1}/unit_1"
    elif block < num_blocks - 2:
        unit = f"middle_flow/block1/unit_{block - 2}"
    else:
        unit = f"exit_flow/block{block - num_blocks + 3}/unit_1"
    if m.group(3) is None:
        return f"xception_65/{unit}/xception_module/shortcut"
    kind = "depthwise" if m.group(5) == "dw" else "pointwise"
    return f"xception_65/{unit}/xception_module/separable_conv{m.group(3)}_{kind}"


def _resnet_beta_scope(path: str) -> str | None:
    if m := re.fullmatch(r"backbone\.stem\.(\d)\.[01]", path):
        return f"resnet_v1_101/conv1_{int(m.group(1)) + 1}"
    m = re.fullmatch(r"backbone\.layer(\d)\.(\d+)\.(?:(conv|bn)(\d)|downsample\.[01])", path)
    if not m:
        return None
    layer = "shortcut" if m.group(3) is None else f"conv{m.group(4)}"
    return f"resnet_v1_101/block{m.group(1)}/unit_{int(m.group(2)) + 1}/bottleneck_v1/{layer}"


def _separable_scope(part: str, name: str, separable: bool) -> str | None:
    """A ConvBNReLU's layer ``part`` ("0", "1", "3", "4") -> TF scope ``name`` (``_depthwise``/``_pointwise``)."""
    if not separable:
        return name if part in ("0", "1") else None
    return {"0": f"{name}_depthwise", "1": f"{name}_depthwise", "3": f"{name}_pointwise",
            "4": f"{name}_pointwise"}.get(part)


def _head_scope(path: str, net: nn.Module) -> str | None:
    aspp = getattr(net, "aspp", None)
    separable = bool(getattr(net, "separable", False))
    if m := re.fullmatch(r"aspp\.branches\.(\d+)\.(conv|bn|\d)", path):
        branch, part = int(m.group(1)), m.group(2)
        if part in ("conv", "bn"):
            return "image_pooling"
        if branch == 0:
            return "aspp0" if part in ("0", "1") else None
        return _separable_scope(part, f"aspp{branch}", separable and branch <= len(aspp.atrous_rates))
    if re.fullmatch(r"aspp\.project\.0\.[01]", path):
        return "concat_projection"
    if re.fullmatch(r"(classifier\.0|decoder\.classifier)", path):
        return "logits/semantic"
    if re.fullmatch(r"decoder\.reduce\.[01]", path):
        return "decoder/feature_projection0"
    if m := re.fullmatch(r"decoder\.fuse\.(\d)\.(\d)", path):
        return _separable_scope(m.group(2), f"decoder/decoder_conv{m.group(1)}", separable)
    return None


def _scope_function(spec: TFDeepLab, net: nn.Module) -> Callable[[str], str | None]:
    if spec.variant == "mobilenet_v2":
        backbone = _mobilenet_scope
    elif spec.variant == "resnet_v1_101_beta":
        backbone = _resnet_beta_scope
    else:
        num_blocks = len(net.backbone.blocks)
        backbone = lambda path: _xception_scope(path, num_blocks)  # noqa: E731
    return lambda path: backbone(path) if path.startswith("backbone.") else _head_scope(path, net)


def _aspp_concat_order(net: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """The projection's input channels from TF's order [image pooling, aspp0, aspp1, ...] to the project's
    [aspp0, aspp1, ..., image pooling]."""
    channels = net.aspp.branches[0][0].out_channels
    pooled = any(hasattr(branch, "conv") for branch in net.aspp.branches)
    return (lambda w: np.concatenate([w[:, channels:], w[:, :channels]], axis=1)) if pooled else (lambda w: w)


def tf_rules(net: nn.Module, scope_of: Callable[[str], str | None],
             extra: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None) -> dict[str, Rule]:
    """A :class:`Rule` for every parameter and statistic of ``net``'s convolutions and BatchNorms, from the TF
    scope ``scope_of`` gives each module (its BatchNorm under ``<scope>/BatchNorm``); ``extra``: a further
    transform of some modules' weights (by module path)."""
    rules, unknown = {}, []
    for path, module in net.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if not isinstance(module, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)):
            if own:
                unknown.append(path)
            continue
        scope = scope_of(path)
        if scope is None:
            unknown.append(path)
            continue
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            layout = depthwise_hwcm if depthwise else conv_hwio
            if path in (extra or {}):
                layout = then(layout, extra[path])
            rules[f"{path}.weight"] = Rule((f"{scope}/{'depthwise_weights' if depthwise else 'weights'}",), layout)
            if module.bias is not None:
                rules[f"{path}.bias"] = Rule((f"{scope}/biases",))
        else:
            for ours, theirs in BN_PARAMS.items():
                rules[f"{path}.{ours}"] = Rule((f"{scope}/BatchNorm/{theirs}",))
    if unknown:
        raise MappingError(f"internal: no TF scope for the network's {', '.join(unknown[:5])}")
    return rules


def tf_state_dict(spec: TFDeepLab, net: nn.Module, tensors: dict[str, np.ndarray], where: str
                  ) -> dict[str, torch.Tensor]:
    """``net``'s state dict from the checkpoint's model variables (each used exactly once)."""
    extra = {"aspp.project.0.0": _aspp_concat_order(net)}
    return fill(net, tf_rules(net, _scope_function(spec, net), extra), tensors, where)
