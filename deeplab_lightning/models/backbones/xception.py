"""Aligned Xception-65 (DeepLab V3+ section 3.2), built on timm's ``xception65``."""
from __future__ import annotations

import timm
import torch
from torch import nn

from .base import Backbone, FeatureInfo, check_output_stride, pretrained_weights

# TF DeepLab's decoder input for xception_65 (feature_extractor.py, DECODER_END_POINTS).
LOW_LEVEL_TAP = "entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise"


class Xception65Backbone(Backbone):
    """The modified ("aligned") Xception of V3+ section 3.2: a deeper middle flow (16 blocks) and every
    max-pool replaced by a strided depthwise-separable conv. timm builds it with ``output_stride`` 8/16/32
    (strides past it become dilation) and loads the ImageNet weights ported from the DeepLab release
    (``xception65.tf_in1k``) when ``pretrained``; their input range, [-1, 1] (mean = std = 0.5, TF DeepLab's
    ``preprocess_zero_mean_unit_range``), is taken from timm's ``pretrained_cfg``.

    As in the TF reference (``activation_fn_in_separable_conv=False``), a separable conv has BN after its
    depthwise and its pointwise conv, and a ReLU after them only in the last exit-flow block; elsewhere a
    ReLU starts each separable conv. The paper's text ("extra batch normalization and ReLU activation are
    added after each 3x3 depthwise convolution") describes the MobileNet-style variant, not the released
    model.

    Input [N,3,H,W] -> two maps: the decoder's low-level feature, as in TF (:data:`LOW_LEVEL_TAP`: entry-flow
    block 2's second separable conv after its BN, before any ReLU; [N, 256, H/4, W/4]) and the exit-flow
    output [N, 2048, H/os, W/os].
    """

    def __init__(self, *, output_stride: int = 16, pretrained: bool = False,
                 model_name: str = "xception65.tf_in1k") -> None:
        super().__init__()
        self.output_stride = check_output_stride(output_stride)
        with pretrained_weights(f"Xception-65 ({model_name})", hf_repo=f"timm/{model_name}"):
            net = timm.create_model(model_name, pretrained=pretrained, output_stride=output_stride, num_classes=0)
        self.stem, self.blocks = net.stem, net.blocks
        self.input_mean = tuple(net.pretrained_cfg["mean"])
        self.input_std = tuple(net.pretrained_cfg["std"])
        # Entry-flow block 2 (blocks[1]): its ReLU after conv2 must not overwrite conv2's output, the tap.
        self.blocks[1].stack.act3 = nn.ReLU()
        self.feature_info = [FeatureInfo(LOW_LEVEL_TAP, self.blocks[1].stack.conv2.conv_pw.out_channels, 4),
                             FeatureInfo("exit_flow", self.blocks[-1].out_channels, output_stride)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.blocks[0](self.stem(x))
        block = self.blocks[1]
        low_level = block.stack[:4](x)  # act1, conv1, act2, conv2
        skip = x if block.shortcut is None else block.shortcut(x)
        x = block.stack[4:](low_level) + skip  # act3, conv3 (strided), residual
        for block in self.blocks[2:]:
            x = block(x)
        return [low_level, x]
