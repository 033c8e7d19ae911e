"""The DeepLab V3+ decoder (V3+ section 3.1, figure 2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvBNReLU, logits_conv


class Decoder(nn.Module):
    """Low-level features -> 1x1 conv to ``low_level_channels`` (48); concatenated with the encoder output
    upsampled bilinearly to their size (x4 at OS16); two 3x3 convs of ``channels`` (256); 1x1 classifier.

    encoder [N, C_enc, H/os, W/os], low_level [N, C_low, H/4, W/4] -> logits [N, num_classes, H/4, W/4].
    ``separable`` makes the 3x3 convs depthwise-separable (on for Xception-65, as in the paper);
    ``align_corners`` is the geometry of the bilinear upsampling (see :class:`~deeplab_lightning.models.DeepLab`).
    """

    def __init__(
        self,
        encoder_channels: int,
        low_level_in_channels: int,
        num_classes: int,
        *,
        low_level_channels: int = 48,
        channels: int = 256,
        separable: bool = False,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.reduce = ConvBNReLU(low_level_in_channels, low_level_channels, 1)
        self.fuse = nn.Sequential(
            ConvBNReLU(encoder_channels + low_level_channels, channels, 3, separable=separable),
            ConvBNReLU(channels, channels, 3, separable=separable),
        )
        self.classifier = logits_conv(channels, num_classes)

    def forward(self, encoder: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low_level = self.reduce(low_level)
        encoder = F.interpolate(encoder, size=low_level.shape[-2:], mode="bilinear",
                                align_corners=self.align_corners)
        return self.classifier(self.fuse(torch.cat([encoder, low_level], dim=1)))
