"""Aligned Xception-65 (DeepLab V3+ section 3.2), from timm's ``xception65`` in features mode."""
from __future__ import annotations

import timm
import torch

from .base import Backbone, FeatureInfo


class Xception65Backbone(Backbone):
    """The modified ("aligned") Xception of V3+ section 3.2: deeper middle flow (16 blocks), every max-pool
    replaced by a strided depthwise-separable conv, and BN + ReLU after every 3x3 depthwise conv. timm builds
    it with ``output_stride`` 8/16/32 (strides past it become dilation) and loads its ImageNet weights
    (``xception65.tf_in1k``, ported from the DeepLab release) when ``pretrained`` and online.

    Input [N,3,H,W] -> five maps of strides (2, 4, 8, os, os) and channels (128, 256, 728, 1024, 2048); the
    stride-4 map (256 channels, entry-flow block 2) feeds the V3+ decoder, as in the paper.
    """

    def __init__(self, *, output_stride: int = 16, pretrained: bool = False,
                 model_name: str = "xception65.tf_in1k") -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.body = timm.create_model(model_name, pretrained=pretrained, features_only=True,
                                      output_stride=output_stride)
        self.output_stride = output_stride
        info = self.body.feature_info
        self.feature_info = [FeatureInfo(m["module"], m["num_chs"], m["reduction"]) for m in info.get_dicts()]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)
