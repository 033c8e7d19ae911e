"""DeepLab networks: a backbone, a head, and bilinear upsampling of the logits to the input size."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.base import Backbone
from .backbones.resnet import ResNetBackbone
from .heads.aspp import ASPP, ASPPL, default_atrous_rates
from .heads.cascade import CascadeBlocks
from .heads.decoder import Decoder
from .heads.largefov import FCHead
from .layers import logits_conv


def parameter_groups_of(net: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The optimizer groups ``net`` declares (``net.parameter_groups()``, see :meth:`DeepLab.parameter_groups`);
    for a network that declares none, the same rule with its ``backbone`` attribute, if any."""
    if hasattr(net, "parameter_groups"):
        return net.parameter_groups()
    backbone = getattr(net, "backbone", None)
    return _pretrained_and_new(net, backbone if isinstance(backbone, nn.Module) else None)


def _pretrained_and_new(net: nn.Module, backbone: nn.Module | None) -> dict[str, list[nn.Parameter]]:
    pretrained = [*backbone.parameters()] if backbone is not None else []
    pretrained += [p for m in net.modules() if hasattr(m, "pretrained_parameters")
                   for p in m.pretrained_parameters()]
    ids = {id(p) for p in pretrained}
    return {"backbone": pretrained, "head": [p for p in net.parameters() if id(p) not in ids]}


class DeepLab(nn.Module):
    """Base class: ``forward(images [N,3,H,W]) -> logits [N,num_classes,H,W]`` for any H, W.

    ``images`` are RGB values in [0, 255] (uint8 or float). The network normalises them with its backbone's
    ``input_mean`` / ``input_std`` (ImageNet statistics for ResNet and VGG, [-1, 1] for Xception-65): the
    range the pretrained weights expect is declared in one place, the backbone, and no data pipeline repeats
    it. ``pixel_mean`` (the mean pixel, [1,3,1,1] in [0, 255]) is what padding is filled with: it normalises
    to zero.

    Subclasses implement ``head(features) -> logits`` at the backbone's stride; this class upsamples them
    bilinearly to the input size (every DeepLab version does). With ``align_corners=True`` (the default, as
    the TF reference resizes) input sizes of the form ``k * output_stride + 1`` (513 = 16 * 32 + 1) put every
    feature exactly on the input pixel its convolutions are centred on; ``align_corners=False`` (PyTorch's
    default, kept by :func:`~deeplab_lightning.models.from_torchvision`) misplaces them by up to about half
    the stride (measured by :func:`~deeplab_lightning.models.analysis.upsampling_misplacement`).
    The network declares the optimizer's parameter groups (:meth:`parameter_groups`).

    ``upsampling="zoom"`` upsamples as the released Caffe models do (their ``Interp`` layer, ``zoom_factor`` 8):
    by exactly the output stride, corners aligned ((h - 1) * stride + 1 rows), then cropped to the input size or
    padded by repeating the last row and column. It equals the default on inputs of ``k * output_stride + 1``
    pixels whose features number ``k + 1`` (V1's VGG at 513); MSRA's Caffe ResNet gives 64 features at 513, which
    the Caffe model placed every 8 pixels (505 rows) where the default would stretch them over 513.
    """

    def __init__(self, backbone: Backbone, num_classes: int, *, align_corners: bool = True,
                 upsampling: Literal["input_size", "zoom"] = "input_size") -> None:
        super().__init__()
        if upsampling not in ("input_size", "zoom") or (upsampling == "zoom" and not align_corners):
            raise ValueError(f"upsampling must be 'input_size' or 'zoom' (with align_corners), got {upsampling!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.upsampling = upsampling
        # Not in the state dict: derived from the backbone, so checkpoints do not depend on it.
        self.register_buffer("pixel_mean", 255 * torch.tensor(backbone.input_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", 255 * torch.tensor(backbone.input_std).view(1, 3, 1, 1),
                             persistent=False)

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    @property
    def logit_stride(self) -> int:
        """Stride of the logits before their upsampling (the output stride; V3+'s decoder: 4)."""
        return self.output_stride

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``backbone``: the layers that start from ImageNet weights (the backbone, and the layers of any head
        that declares ``pretrained_parameters()``, V1/V2's fc6/fc7), trained at the base learning rate;
        ``head``: the layers new to DeepLab, trained at ``head_lr_mult`` times it (V1 section 4.1)."""
        return _pretrained_and_new(self, self.backbone)

    def head(self, features: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 255] -> the input range of the backbone's weights, in the network's floating dtype (float32,
        or float64 for a ``.double()`` model; memory format kept)."""
        return (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std

    def stride_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [N,C,h,w] at :attr:`logit_stride`, before their upsampling, of images [N,3,H,W] in [0, 255]
        (``self(images, upsample=False)``: through a compiled forward and the module's hooks)."""
        return self(images, upsample=False)

    def forward(self, images: torch.Tensor, upsample: bool = True) -> torch.Tensor:
        """Logits [N,C,H,W] at the input size (``upsample=False``: at :attr:`logit_stride`)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects images of shape [N, 3, H, W], got {list(images.shape)}")
        logits = self.head(self.backbone(self.normalize(images)))
        # Upsampled in float32 also under bf16 autocast: bf16's 8 bits of mantissa would tie the scores of close
        # classes on ~1 % of the pixels and argmax resolves ties to the lower class index (towards background).
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if not upsample:
            return logits
        if self.upsampling == "zoom":
            return zoom(logits, self.output_stride, images.shape[-2:])
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=self.align_corners)


def zoom(logits: torch.Tensor, factor: int, size: Sequence[int]) -> torch.Tensor:
    """Caffe's ``Interp`` with ``zoom_factor``: [N, C, h, w] -> [N, C, (h - 1) * factor + 1, (w - 1) * factor + 1]
    (bilinear, corners aligned), then cropped to ``size`` or padded by repeating the last row / column."""
    h, w = logits.shape[-2:]
    out = F.interpolate(logits, size=((h - 1) * factor + 1, (w - 1) * factor + 1), mode="bilinear",
                        align_corners=True)[..., :size[0], :size[1]]
    # No branch on the sizes, so that an exported graph serves every input size.
    missing = (0, torch.sym_max(size[1] - out.shape[-1], 0), 0, torch.sym_max(size[0] - out.shape[-2], 0))
    return F.pad(out, missing, mode="replicate")


class DeepLabV1(DeepLab):
    """DeepLab V1 LargeFOV (V1 sections 3.1 and 4.1): atrous VGG-16 (output stride 8) -> fc6 3x3 with
    dilation 12 and 1024 channels -> fc7 1x1 1024 -> fc8, dropout 0.5, bilinear x8. The dense CRF of the
    paper is a separate post-processing step. With ImageNet weights, fc6/fc7 start from VGG's subsampled fc
    layers.
    """

    def __init__(self, backbone: Backbone, num_classes: int = 21, *, dilation: int = 12, channels: int = 1024,
                 dropout: float = 0.5, upsampling: Literal["input_size", "zoom"] = "input_size") -> None:
        super().__init__(backbone, num_classes, upsampling=upsampling)
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
                 dropout: float = 0.5, upsampling: Literal["input_size", "zoom"] = "input_size") -> None:
        super().__init__(backbone, num_classes, upsampling=upsampling)
        self.aspp = ASPPL(backbone.feature_info[-1].channels, num_classes, atrous_rates, channels=channels,
                          dropout=dropout)
        if channels is not None and getattr(backbone, "imagenet_fc", None) is not None:
            for branch in self.aspp.branches:
                branch.load_vgg_fc(backbone.imagenet_fc)

    def head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.aspp(features[-1])


class _ASPPDeepLab(DeepLab):
    """What V3 and V3+ share: a backbone and the V3 ASPP on its output (V3 section 3.3), whose rates default to
    the paper's for the backbone's output stride (6/12/18 at 16, doubled at 8)."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        atrous_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        image_pooling: bool = True,
        separable: bool = False,
        aspp_dropout: float = 0.1,
        align_corners: bool = True,
    ) -> None:
        super().__init__(backbone, num_classes, align_corners=align_corners)
        rates = tuple(atrous_rates) if atrous_rates is not None else default_atrous_rates(backbone.output_stride)
        self.aspp_channels, self.separable = aspp_channels, separable
        self.aspp = ASPP(backbone.feature_info[-1].channels, aspp_channels, rates, image_pooling=image_pooling,
                         separable=separable, dropout=aspp_dropout)


class DeepLabV3(_ASPPDeepLab):
    """DeepLab V3 with parallel ASPP (V3 section 3.3): backbone -> ASPP (concat + 1x1 projection) ->
    1x1 classifier, upsampled x ``output_stride``. ``aspp`` keyword arguments: ``atrous_rates``,
    ``aspp_channels``, ``image_pooling``, ``separable``, ``aspp_dropout``, ``align_corners``.

    ``extra_conv`` adds a 3x3 conv + BN + ReLU before the classifier, as torchvision's DeepLabHead has (not in
    the paper; used by :func:`from_torchvision`, with ``align_corners=False``).
    """

    def __init__(self, backbone: Backbone, num_classes: int = 21, *, extra_conv: bool = False, **aspp) -> None:
        super().__init__(backbone, num_classes, **aspp)
        c = self.aspp_channels
        layers: list[nn.Module] = []
        if extra_conv:
            layers += [nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.classifier = nn.Sequential(*layers, logits_conv(c, num_classes))

    def head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.aspp(features[-1]))


class DeepLabV3Plus(_ASPPDeepLab):
    """DeepLab V3+ (V3+ section 3.1): the V3 encoder (ASPP, no classifier) and a decoder that fuses the
    stride-4 backbone features; logits at stride 4 are upsampled x4. ``aspp`` keyword arguments as
    :class:`DeepLabV3`'s; the decoder's are ``low_level_channels`` and ``decoder_channels``.
    """

    def __init__(self, backbone: Backbone, num_classes: int = 21, *, low_level_channels: int = 48,
                 decoder_channels: int = 256, **aspp) -> None:
        super().__init__(backbone, num_classes, **aspp)
        self.low_level_index = backbone.feature_index(stride=4)
        self.decoder = Decoder(self.aspp_channels, backbone.feature_info[self.low_level_index].channels,
                               num_classes, low_level_channels=low_level_channels, channels=decoder_channels,
                               separable=self.separable, align_corners=self.align_corners)

    @property
    def logit_stride(self) -> int:
        return self.backbone.feature_info[self.low_level_index].stride

    def head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.decoder(self.aspp(features[-1]), features[self.low_level_index])


class DeepLabV3Cascade(DeepLab):
    """DeepLab V3 "going deeper" (V3 section 3.2): block4 followed by cascaded copies block5-7, each at twice
    the previous rate, then a 1x1 classifier (no ASPP). Needs a ResNet-50/101 (:class:`ResNetBackbone`).
    Blocks 5-7 use the backbone's multi-grid unit rates, as block4 does (V3 section 3.2: "multi-grid ...
    applied to block4 to block7"), and start from the backbone's block4 rate.
    """

    def __init__(self, backbone: ResNetBackbone, num_classes: int = 21, *, num_blocks: int = 3) -> None:
        super().__init__(backbone, num_classes)
        channels = backbone.feature_info[-1].channels
        self.cascade = CascadeBlocks(channels, block4_rate=backbone.stage_rate("layer4"), num_blocks=num_blocks,
                                     multi_grid=backbone.multi_grid)
        self.classifier = logits_conv(channels, num_classes)

    def head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.cascade(features[-1]))
