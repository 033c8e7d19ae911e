"""ResNet-v1-beta: the ResNet of the TF DeepLab reference's ``resnet_v1_101_beta`` (TF-slim ``resnet_v1_beta``,
the backbone of its ResNet-101 DeepLabV3+), in TF's layout rather than torchvision's.

Its two differences from torchvision's ResNet (facts from ``core/resnet_v1_beta.py`` and TF-slim's
``resnet_utils.stack_blocks_dense``, read, not copied): the 7x7 stem is three 3x3 convolutions (64 stride 2, 64,
128, each with BN and ReLU) before the 3x3 stride-2 max pool, and each block's stride sits in its *last* unit's
3x3 convolution (blocks 1-3; block 4 has none), whose shortcut then subsamples (a 1x1 max pool: every second
pixel) instead of convolving. Past ``output_stride`` a unit's stride becomes dilation: the unit that held it keeps
the rate of the features it reads, the later ones take the multiplied rate, and block 4's units multiply it by
``multi_grid`` (the zoo's (1, 2, 4): rates 2, 4, 8 at output stride 16). The units are torchvision's
``Bottleneck`` (stride in the 3x3 conv, ReLU after each BN and after the addition), as TF-slim's
``bottleneck_v1``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from ..layers import MaxPool2dTFSame
from .base import Backbone, FeatureInfo, check_output_stride

UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
LOW_LEVEL_TAP = "block1/unit_2/bottleneck_v1/conv3"  # TF DeepLab's decoder input for resnet_v1_*_beta


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


def _block(in_channels: int, width: int, units: int, stride: int) -> nn.Sequential:
    """One block: ``units`` bottlenecks of ``width`` (4 * width outputs), the last one with ``stride``."""
    layers = []
    for u in range(units):
        last = u == units - 1
        unit_stride = stride if last else 1
        inplanes = in_channels if u == 0 else 4 * width
        if inplanes != 4 * width:
            shortcut: nn.Module = nn.Sequential(nn.Conv2d(inplanes, 4 * width, 1, unit_stride, bias=False),
                                                nn.BatchNorm2d(4 * width))
        else:
            shortcut = nn.MaxPool2d(1, unit_stride)  # TF-slim's subsample; the identity at stride 1
        layers.append(Bottleneck(inplanes, width, unit_stride, downsample=shortcut))
    return nn.Sequential(*layers)


class ResNetBetaBackbone(Backbone):
    """ResNet-v1-50/101-beta (see the module's docstring). No ImageNet weights are loaded here: its weights
    come from TF checkpoints (``deeplab-lightning convert``); the input range is TF DeepLab's [-1, 1].

    Args:
        depth: 50 or 101.
        output_stride: 8, 16 or 32.
        multi_grid: block 4's unit rates (3 values; None: all 1).
        tf_same_padding: the stem's max pool padded as TF's ``'SAME'`` (differs from PyTorch's on even sizes
            only); TF pads the strided convolutions symmetrically (``conv2d_same``), as PyTorch does.

    Input [N, 3, H, W] -> [low-level [N, 256, H/4, W/4] (block 1's second unit's last BN, before the residual
    addition: TF's decoder tap), output [N, 2048, H/os, W/os]].
    """

    input_mean = (0.5, 0.5, 0.5)
    input_std = (0.5, 0.5, 0.5)

    def __init__(self, depth: int = 101, *, output_stride: int = 16, multi_grid: Sequence[int] | None = None,
                 pretrained: bool = False, tf_same_padding: bool = False) -> None:
        super().__init__()
        if depth not in UNITS:
            raise ValueError(f"ResNet-v1-beta depth must be one of {sorted(UNITS)}, got {depth}")
        if pretrained:
            raise ValueError("No ImageNet weights for ResNet-v1-beta are loaded here (they are TF's): set "
                             "model.pretrained_backbone false, or convert a TF DeepLab checkpoint")
        self.output_stride = check_output_stride(output_stride)
        self.multi_grid = tuple(multi_grid) if multi_grid is not None else (1, 1, 1)
        if len(self.multi_grid) != UNITS[depth][3]:
            raise ValueError(f"multi_grid={list(self.multi_grid)} needs {UNITS[depth][3]} unit rates (block 4)")
        self.stem = nn.Sequential(_conv_bn_relu(3, 64, 2), _conv_bn_relu(64, 64, 1), _conv_bn_relu(64, 128, 1))
        self.maxpool = MaxPool2dTFSame(3, 2) if tf_same_padding else nn.MaxPool2d(3, 2, padding=1)
        channels = 128
        for b, (units, width, stride) in enumerate(zip(UNITS[depth], (64, 128, 256, 512), (2, 2, 2, 1)), 1):
            setattr(self, f"layer{b}", _block(channels, width, units, stride))
            channels = 4 * width
        self._dilate()
        self.feature_info = [FeatureInfo(LOW_LEVEL_TAP, 256, 4), FeatureInfo("block4", 2048, output_stride)]

    def _dilate(self) -> None:
        """Strides past the output stride become dilation (TF-slim's ``stack_blocks_dense``)."""
        stride, rate = 4, 1  # after the stem and its max pool
        for b in range(1, 5):
            for u, unit in enumerate(getattr(self, f"layer{b}")):
                unit_rate = self.multi_grid[u] if b == 4 else 1
                unit.conv2.dilation = unit.conv2.padding = (rate * unit_rate,) * 2
                if unit.conv2.stride != (1, 1):
                    if stride >= self.output_stride:  # this unit keeps the rate it reads; the next ones double it
                        unit.conv2.stride = (1, 1)
                        unit.downsample = nn.Identity() if isinstance(unit.downsample, nn.MaxPool2d) else \
                            unit.downsample
                        rate *= 2
                    else:
                        stride *= 2

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.layer1[0](self.maxpool(self.stem(x)))
        unit = self.layer1[1]  # its last BN before the addition is the decoder's input
        out = unit.relu(unit.bn2(unit.conv2(unit.relu(unit.bn1(unit.conv1(x))))))
        low_level = unit.bn3(unit.conv3(out))
        x = unit.relu(low_level + unit.downsample(x))
        x = self.layer1[2:](x)
        return [low_level, self.layer4(self.layer3(self.layer2(x)))]
