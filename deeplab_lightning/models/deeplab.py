"""DeepLab networks: a backbone, a head, and bilinear upsampling of the logits to the input size."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.base import Backbone
from .heads.aspp import ASPP, ASPPL, default_atrous_rates
from .heads.cascade import CascadeBlocks
from .heads.decoder import Decoder
from .heads.largefov import FCHead


class DeepLab(nn.Module):
    """Base class: ``forward(images [N,3,H,W]) -> logits [N,num_classes,H,W]`` for any H, W.

    Subclasses set ``self.backbone`` (a :class:`Backbone`) and implement ``head(features) -> logits`` at the
    backbone's stride; this class upsamples them bilinearly to the input size (every DeepLab version does).
    Parameters under ``backbone`` form the backbone group of the optimizer, the rest the head group.
    Deviation: bilinear resizing uses ``align_corners=False`` (PyTorch's convention; the TensorFlow reference
    code resizes with ``align_corners=True``), which shifts the logits by under one input pixel.
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


class DeepLabV1(DeepLab):
    """DeepLab V1 LargeFOV (V1 sections 3.1 and 4.1): atrous VGG-16 (output stride 8) -> fc6 3x3 with
    dilation 12 and 1024 channels -> fc7 1x1 1024 -> fc8, dropout 0.5, bilinear x8. The dense CRF of the
    paper is a separate post-processing step. With ImageNet weights, fc6/fc7 start from VGG's subsampled fc
    layers.
    """

    def __init__(self, backbone: Backbone, num_classes: int = 21, *, dilation: int = 12, channels: int = 1024,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.classifier = FCHead(backbone.feature_info[-1].channels, num_classes, dilation=dilation,
                                 channels=channels, dropout=dropout)
        if getattr(backbone, "imagenet_fc", None) is not None:
            self.classifier.load_vgg_fc(backbone.imagenet_fc)

    def head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(features[-1])


class DeepLabV2(DeepLab):
    """DeepLab V2 with ASPP-L (V2 section 3.3): four atrous branches (rates 6, 12, 18, 24) whose logits
    are summed, bilinear x8. ``channels=1024`` gives each branch fc6-fc7-fc8 (VGG-16);
    ``channels=None`` a single 3x3 conv per branch (ResNet-101, as in the released model).
    """

    def __init__(self, backbone: Backbone, num_classes: int = 21, *,
                 atrous_rates: Sequence[int] = (6, 12, 18, 24), channels: int | None = 1024,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.aspp = ASPPL(backbone.feature_info[-1].channels, num_classes, atrous_rates, channels=channels,
                          dropout=dropout)
        if channels is not None and getattr(backbone, "imagenet_fc", None) is not None:
            for branch in self.aspp.branches:
                branch.load_vgg_fc(backbone.imagenet_fc)

    def head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.aspp(features[-1])


def _aspp(backbone: Backbone, channels: int, atrous_rates: Sequence[int] | None, image_pooling: bool,
          separable: bool, dropout: float) -> ASPP:
    """The V3 ASPP on the backbone's output; rates default to the paper's for its output stride."""
    rates = tuple(atrous_rates) if atrous_rates is not None else default_atrous_rates(backbone.output_stride)
    return ASPP(backbone.feature_info[-1].channels, channels, rates, image_pooling=image_pooling,
                separable=separable, dropout=dropout)


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
        self.aspp = _aspp(backbone, aspp_channels, atrous_rates, image_pooling, separable, aspp_dropout)
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
        self.aspp = _aspp(backbone, aspp_channels, atrous_rates, image_pooling, separable, aspp_dropout)
        self.low_level_index = backbone.feature_index(stride=4)
        self.decoder = Decoder(aspp_channels, backbone.feature_info[self.low_level_index].channels, num_classes,
                               low_level_channels=low_level_channels, channels=decoder_channels,
                               separable=separable)

    def head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.decoder(self.aspp(features[-1]), features[self.low_level_index])


class DeepLabV3Cascade(DeepLab):
    """DeepLab V3 "going deeper" (V3 section 3.2): block4 followed by cascaded copies block5-7, each at twice
    the previous rate and with multi-grid unit rates, then a 1x1 classifier (no ASPP). Needs a ResNet-50/101.
    """

    def __init__(self, backbone: Backbone, num_classes: int = 21, *, num_blocks: int = 3,
                 multi_grid: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        channels = backbone.feature_info[-1].channels
        block4_rate = max(32 // backbone.output_stride, 1)
        self.cascade = CascadeBlocks(channels, block4_rate=block4_rate, num_blocks=num_blocks,
                                     multi_grid=multi_grid)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.cascade(features[-1]))
