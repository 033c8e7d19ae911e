"""DeepLab networks: a backbone, a head, and bilinear upsampling of the logits to the input size."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.base import Backbone
from .heads.aspp import ASPP, default_atrous_rates
from .heads.decoder import Decoder


class DeepLab(nn.Module):
    """Base class: ``forward(images [N,3,H,W]) -> logits [N,num_classes,H,W]`` for any H, W.

    Subclasses set ``self.backbone`` (a :class:`Backbone`) and implement ``head(features) -> logits`` at the
    backbone's stride; this class upsamples them bilinearly to the input size (every DeepLab version does).
    Parameters under ``backbone`` form the backbone group of the optimizer, the rest the head group.
    """

    backbone: Backbone
    num_classes: int

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def head(self, features: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects images of shape [N, 3, H, W], got {list(images.shape)}")
        logits = self.head(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabV3(DeepLab):
    """DeepLab V3 with parallel ASPP (V3 section 3.3): backbone -> ASPP (concat + 1x1 projection) ->
    1x1 classifier, upsampled x ``output_stride``.

    ``extra_conv`` adds a 3x3 conv + BN + ReLU before the classifier, as torchvision's DeepLabHead has (not in
    the paper; used by :func:`from_torchvision`).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int = 21,
        *,
        atrous_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        image_pooling: bool = True,
        separable: bool = False,
        aspp_dropout: float = 0.1,
        extra_conv: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        rates = tuple(atrous_rates) if atrous_rates is not None else default_atrous_rates(backbone.output_stride)
        self.aspp = ASPP(backbone.feature_info[-1].channels, aspp_channels, rates, image_pooling=image_pooling,
                         separable=separable, dropout=aspp_dropout)
        layers: list[nn.Module] = []
        if extra_conv:
            layers += [nn.Conv2d(aspp_channels, aspp_channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(aspp_channels), nn.ReLU(inplace=True)]
        self.classifier = nn.Sequential(*layers, nn.Conv2d(aspp_channels, num_classes, 1))

    def head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.aspp(features[-1]))


class DeepLabV3Plus(DeepLab):
    """DeepLab V3+ (V3+ section 3.1): the V3 encoder (ASPP, no classifier) and a decoder that fuses the
    stride-4 backbone features; logits at stride 4 are upsampled x4.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int = 21,
        *,
        atrous_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        image_pooling: bool = True,
        separable: bool = False,
        aspp_dropout: float = 0.1,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        rates = tuple(atrous_rates) if atrous_rates is not None else default_atrous_rates(backbone.output_stride)
        self.aspp = ASPP(backbone.feature_info[-1].channels, aspp_channels, rates, image_pooling=image_pooling,
                         separable=separable, dropout=aspp_dropout)
        self.low_level_index = backbone.feature_index(stride=4)
        self.decoder = Decoder(aspp_channels, backbone.feature_info[self.low_level_index].channels, num_classes,
                               low_level_channels=low_level_channels, channels=decoder_channels,
                               separable=separable)

    def head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.decoder(self.aspp(features[-1]), features[self.low_level_index])
