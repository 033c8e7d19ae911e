"""Atrous Spatial Pyramid Pooling as in DeepLab V3 (section 3.3) and V3+ (section 3.2)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import check_output_stride
from ..layers import ConvBNReLU
from .largefov import FCHead


def default_atrous_rates(output_stride: int) -> tuple[int, int, int]:
    """V3 section 3.3: rates (6, 12, 18) at output stride 16, doubled at output stride 8."""
    check_output_stride(output_stride)
    return tuple(r * 16 // output_stride for r in (6, 12, 18))  # type: ignore[return-value]


class PooledBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm of pooled features [N, C, 1, 1].

    Deviation: in training, a batch of one image has a single value per channel, where batch statistics are
    undefined (PyTorch raises); it is then normalised with the running statistics (not updated), so batch
    size 1 trains instead of crashing. It is a ``BatchNorm2d``, so ``nn.SyncBatchNorm.convert_sync_batchnorm``
    converts it: under DDP its statistics then cover the images of all processes (one image per GPU included).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == x.shape[1]:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class ImagePooling(nn.Module):
    """Image-level features (V3 section 3.3): global average pool -> 1x1 conv -> BN -> ReLU, broadcast back
    to the input's size (what bilinear upsampling of a 1x1 map gives). [N, C, H, W] -> [N, out_channels, H, W].
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = PooledBatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv(F.adaptive_avg_pool2d(x, 1)))).expand(-1, -1, *x.shape[-2:])
        # Materialised in x's memory format: concatenated with a broadcast view, a channels-last ASPP output
        # would fall back to the contiguous format (and every conv after it would convert).
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class ASPP(nn.Module):
    """V3 parallel ASPP: a 1x1 conv, one 3x3 atrous conv per rate and image pooling, each ``channels`` wide
    with BN; **concatenated**, then projected by a 1x1 conv + BN + ReLU and dropout.

    [N, in_channels, H, W] -> [N, channels, H, W].

    Args:
        atrous_rates: dilation of each 3x3 branch ((6, 12, 18) at OS16, (12, 24, 36) at OS8).
        image_pooling: include the image-level branch (V3 section 3.3; an ablation switch).
        separable: depthwise-separable 3x3 branches (V3+ section 3.2, used with Xception).
        dropout: after the projection; 0.1 as in the reference TensorFlow code.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 256,
        atrous_rates: Sequence[int] = (6, 12, 18),
        *,
        image_pooling: bool = True,
        separable: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.atrous_rates = tuple(atrous_rates)
        branches: list[nn.Module] = [ConvBNReLU(in_channels, channels, 1)]
        branches += [ConvBNReLU(in_channels, channels, 3, dilation=r, separable=separable) for r in atrous_rates]
        if image_pooling:
            branches.append(ImagePooling(in_channels, channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(ConvBNReLU(len(branches) * channels, channels, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class ASPPL(nn.Module):
    """V2's ASPP-L (V2 section 3.3, figure 7): four parallel branches at dilation 6, 12, 18, 24 whose
    class scores are **summed**.

    With ``channels`` (VGG-16: 1024) each branch is fc6 (3x3 atrous) -> fc7 -> fc8 with dropout, as in the
    paper; with ``channels=None`` (ResNet-101, as in the released DeepLab-v2 ResNet model) each branch is a
    single 3x3 atrous conv to the classes. [N, in_channels, H, W] -> [N, num_classes, H, W].
    """

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int] = (6, 12, 18, 24), *,
                 channels: int | None = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        self.atrous_rates = tuple(atrous_rates)
        if channels is None:
            branches = [nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in atrous_rates]
            for conv in branches:
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)
        else:
            branches = [FCHead(in_channels, num_classes, dilation=r, channels=channels, dropout=dropout)
                        for r in atrous_rates]
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out
