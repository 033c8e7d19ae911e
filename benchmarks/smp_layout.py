"""This project's ResNet-101 and layers in the layout of segmentation_models_pytorch's ``DeepLabV3Plus``, so the
benchmark compares the same architecture with the same (issue 14, "honest peer rows").

smp's V3+ is not the paper's: its ASPP 3x3 branches are depthwise-separable **without** BN + ReLU between the
depthwise and the pointwise conv, at rates 12/24/36 at output stride 16 (the paper's are 6/12/18), the
projection has dropout 0.5 and is followed by one more separable 3x3 conv; its decoder fuses with **one**
separable 3x3 conv (the paper's has two 3x3 convs); the 1x1 classifier has a bias and both upsamplings are x4
bilinear with ``align_corners=True``; its encoder dilates every 3x3 conv of layer4 at rate 2, the first unit's
included. ``tests/test_benchmarks.py`` loads smp's weights into this module in
registration order and checks equal outputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deeplab_lightning.models.backbones.resnet import ResNetBackbone
from deeplab_lightning.models.heads.aspp import ImagePooling
from deeplab_lightning.models.layers import ConvBNReLU


def _separable(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    """smp's separable conv + BN + ReLU: depthwise 3x3 -> pointwise 1x1 (nothing between) -> BN -> ReLU."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation,
                                groups=in_channels, bias=False),
                      nn.Conv2d(in_channels, out_channels, 1, bias=False)),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class SmpLayoutV3Plus(nn.Module):
    """images [N, 3, H, W] (H, W multiples of 16) -> logits [N, num_classes, H, W]."""

    def __init__(self, num_classes: int = 21, channels: int = 256, atrous_rates: tuple[int, ...] = (12, 24, 36)
                 ) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(101, output_stride=16)
        self.backbone.layer4[0].conv2.dilation = self.backbone.layer4[0].conv2.padding = (2, 2)  # smp's rate
        self.low_level_index = self.backbone.feature_index(stride=4)
        encoder = self.backbone.feature_info[-1].channels
        low = self.backbone.feature_info[self.low_level_index].channels
        branches = [ConvBNReLU(encoder, channels, 1)] + [_separable(encoder, channels, r) for r in atrous_rates]
        self.branches = nn.ModuleList([*branches, ImagePooling(encoder, channels)])
        self.project = nn.Sequential(ConvBNReLU(len(self.branches) * channels, channels, 1), nn.Dropout(0.5))
        self.post_aspp = _separable(channels, channels)
        self.reduce = ConvBNReLU(low, 48, 1)
        self.fuse = _separable(channels + 48, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        top = features[-1]
        aspp = self.post_aspp(self.project(torch.cat([b(top) for b in self.branches], dim=1)))
        aspp = F.interpolate(aspp, scale_factor=4, mode="bilinear", align_corners=True)
        logits = self.classifier(self.fuse(torch.cat([aspp, self.reduce(features[self.low_level_index])], dim=1)))
        return F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=True)
