"""MobileNetV2 (as DeepLab's TF reference uses it) and MobileNetV3-Large (as torchvision's DeepLabV3 builds it),
with atrous depthwise convolutions past the output stride."""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from ..layers import use_tf_same_padding
from .base import Backbone, FeatureInfo, check_output_stride, pretrained_weights


def dilate_depthwise(features: nn.Sequential, output_stride: int, *, strided_block_keeps_rate: bool) -> list[int]:
    """Replace, in place, every stride that would take ``features`` past ``output_stride`` by dilation of the
    depthwise convolutions from that block on. ``strided_block_keeps_rate``: the block whose stride is removed
    keeps the rate of the features it reads (the TF reference's ``mobilenet_base``: ``layer_rate = rate``
    before ``rate *= stride``), so the network computes the same function at every output stride; otherwise
    it takes the new rate (torchvision's ``dilated=True``). Returns each block's output stride."""
    stride, rate, strides = 1, 1, []
    for block in features:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        input_rate = rate
        for conv in convs:
            if conv.stride != (1, 1):
                if stride * conv.stride[0] > output_stride:
                    rate *= conv.stride[0]
                    conv.stride = (1, 1)
                else:
                    stride *= conv.stride[0]
        block_rate = input_rate if strided_block_keeps_rate else rate
        for conv in convs:
            if block_rate > 1 and conv.groups > 1 and conv.kernel_size[0] > 1:
                conv.dilation = (block_rate, block_rate)
                conv.padding = ((conv.kernel_size[0] - 1) // 2 * block_rate,) * 2
        strides.append(stride)
    return strides


def _mobilenet_features(builder, weights, what: str, pretrained: bool, **kwargs) -> nn.Sequential:
    """The ``features`` of torchvision's MobileNet ``builder``, with ImageNet ``weights`` when ``pretrained``."""
    with pretrained_weights(what, url=weights.url):
        return builder(weights=weights if pretrained else None, **kwargs).features


class MobileNetV2Backbone(Backbone):
    """MobileNetV2 as the DeepLab TF reference's ``mobilenet_v2`` feature extractor (its model zoo's
    ``mobilenetv2_coco_voc_trainaug``): torchvision's MobileNetV2 (the same network) up to the last inverted
    residual block (TF's ``layer_18``, 320 channels; the final 1x1 conv to 1280 is not used), strides past
    ``output_stride`` replaced by atrous depthwise convs. The decoder's low-level feature is TF's
    ``layer_4/depthwise_output``: the depthwise output of the second stride-4 block, [N, 144, H/4, W/4].

    Args:
        depth_multiplier: every layer's width times this (TF ``depth_multiplier``; the model zoo has 1.0 and
            0.5). Widths are rounded as TF's ``mobilenet_v2`` rounds them in DeepLab (to multiples of 8 at 1.0,
            to integers otherwise: torchvision's ``round_nearest`` 8 or 1), which agrees with TF for 1.0 and 0.5;
            for multipliers that would take a layer under TF's minimum of 8 channels the widths differ (a TF
            checkpoint then does not load, naming the tensor). ImageNet weights exist for 1.0 only.
        tf_same_padding: pad the stride-2 convolutions as TF's ``'SAME'`` (:func:`use_tf_same_padding`), as the
            TF reference's graph does; differs from PyTorch's padding only on even input sizes.

    Input [N, 3, H, W] -> [low-level [N, 144 * m, H/4, W/4], output [N, 320 * m, H/os, W/os]].
    """

    def __init__(self, *, output_stride: int = 16, pretrained: bool = False, depth_multiplier: float = 1.0,
                 tf_same_padding: bool = False) -> None:
        super().__init__()
        self.output_stride = check_output_stride(output_stride)
        if pretrained and depth_multiplier != 1.0:
            raise ValueError(f"torchvision has ImageNet weights for MobileNetV2 at depth_multiplier 1.0 only, not "
                             f"{depth_multiplier}: set model.pretrained_backbone false")
        self.features = _mobilenet_features(tvm.mobilenet_v2, tvm.MobileNet_V2_Weights.IMAGENET1K_V1,
                                            "MobileNetV2", pretrained, width_mult=depth_multiplier,
                                            round_nearest=8 if depth_multiplier == 1.0 else 1)[:18]
        dilate_depthwise(self.features, output_stride, strided_block_keeps_rate=True)
        if tf_same_padding:
            use_tf_same_padding(self.features)
        tap = self.features[3].conv[1]  # depthwise conv + BN + ReLU6 of the block at index 3 (TF layer_4)
        self.feature_info = [FeatureInfo("layer_4/depthwise_output", tap.out_channels, 4),
                             FeatureInfo("layer_18", self.features[-1].out_channels, output_stride)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.features[:3](x)
        block = self.features[3]  # stride 1, 24 -> 24 channels: a residual block
        low_level = block.conv[:2](x)
        x = x + block.conv[2:](low_level)
        return [low_level, self.features[4:](x)]


class MobileNetV3LargeBackbone(Backbone):
    """MobileNetV3-Large as torchvision's ``deeplabv3_mobilenet_v3_large`` builds it (its ``features``, the
    last 1x1 conv to 960 channels included), strides past ``output_stride`` replaced by atrous depthwise
    convs: at output stride 16 the same geometry as torchvision's ``dilated=True``, so
    :func:`~deeplab_lightning.models.from_torchvision` converts that model exactly. The decoder's low-level
    feature is the last stride-4 block's output.

    Input [N, 3, H, W] -> [low-level [N, 24, H/4, W/4], output [N, 960, H/os, W/os]].
    """

    def __init__(self, *, output_stride: int = 16, pretrained: bool = False) -> None:
        super().__init__()
        self.output_stride = check_output_stride(output_stride)
        self.features = _mobilenet_features(tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
                                            "MobileNetV3-Large", pretrained)
        strides = dilate_depthwise(self.features, output_stride, strided_block_keeps_rate=False)
        self.low_level_index = max(i for i, s in enumerate(strides) if s == 4)
        self.feature_info = [FeatureInfo(f"features.{self.low_level_index}",
                                         self.features[self.low_level_index].out_channels, 4),
                             FeatureInfo(f"features.{len(self.features) - 1}", self.features[-1].out_channels,
                                         output_stride)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        low_level = self.features[:self.low_level_index + 1](x)
        return [low_level, self.features[self.low_level_index + 1:](low_level)]
