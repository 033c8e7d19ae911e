"""Named model builders: ``create_model("deeplabv3plus_resnet101", num_classes=21, output_stride=16)``."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

from torch import nn

from .backbones.resnet import ResNetBackbone
from .backbones.vgg import VGG16Backbone
from .backbones.xception import Xception65Backbone
from .deeplab import DeepLabV1, DeepLabV2, DeepLabV3, DeepLabV3Cascade, DeepLabV3Plus

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def _resnet_deeplab(
    cls: type,
    depth: int,
    default_output_stride: int,
    default_multi_grid: Sequence[int] | None,
    num_classes: int,
    output_stride: int | None,
    pretrained_backbone: bool,
    *,
    multi_grid: Sequence[int] | None = None,
    **head_kwargs,
) -> nn.Module:
    backbone = ResNetBackbone(
        depth,
        output_stride=output_stride or default_output_stride,
        multi_grid=multi_grid if multi_grid is not None else default_multi_grid,
        pretrained=pretrained_backbone,
    )
    return cls(backbone, num_classes, **head_kwargs)


def _vgg_deeplab(cls: type, num_classes: int, output_stride: int | None, pretrained_backbone: bool,
                 **head_kwargs) -> nn.Module:
    if output_stride not in (None, 8):
        raise ValueError(f"The atrous VGG-16 of DeepLab V1/V2 has output stride 8 only, got {output_stride}")
    return cls(VGG16Backbone(pretrained=pretrained_backbone), num_classes, **head_kwargs)


def _xception_deeplab(num_classes: int, output_stride: int | None, pretrained_backbone: bool,
                      **head_kwargs) -> nn.Module:
    # V3+ section 4.3: depthwise-separable ASPP and decoder convs with Xception ("sep" rows of table 5).
    head_kwargs.setdefault("separable", True)
    backbone = Xception65Backbone(output_stride=output_stride or 16, pretrained=pretrained_backbone)
    return DeepLabV3Plus(backbone, num_classes, **head_kwargs)


# V1 and V2: output stride 8 (atrous VGG-16 / ResNet-101, V2 section 4.1).
_REGISTRY["deeplabv1_vgg16_largefov"] = partial(_vgg_deeplab, DeepLabV1)
_REGISTRY["deeplabv2_vgg16"] = partial(_vgg_deeplab, DeepLabV2)
_REGISTRY["deeplabv2_resnet101"] = partial(_resnet_deeplab, partial(DeepLabV2, channels=None), 101, 8, None)
# V3 section 4.1/4.3: train at output stride 16; multi-grid (1, 2, 4) in block4 is the paper's best setting.
for _depth in (18, 50, 101):
    _mg = (1, 2, 4) if _depth >= 50 else None
    _REGISTRY[f"deeplabv3_resnet{_depth}"] = partial(_resnet_deeplab, DeepLabV3, _depth, 16, _mg)
    _REGISTRY[f"deeplabv3plus_resnet{_depth}"] = partial(_resnet_deeplab, DeepLabV3Plus, _depth, 16, _mg)
for _depth in (50, 101):
    _REGISTRY[f"deeplabv3_cascade_resnet{_depth}"] = partial(_resnet_deeplab, DeepLabV3Cascade, _depth, 16,
                                                             (1, 2, 4))
_REGISTRY["deeplabv3plus_xception65"] = _xception_deeplab


# The registry's names as a type: the command line lists them in --help and refuses others at parse time.
ModelName = Literal[tuple(sorted(_REGISTRY))]  # type: ignore[valid-type]


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str,
    num_classes: int = 21,
    *,
    output_stride: int | None = None,
    pretrained_backbone: bool = False,
    **kwargs,
) -> nn.Module:
    """Build a DeepLab variant by name; ``output_stride=None`` takes the paper's training value.

    Extra keyword arguments go to the backbone (``multi_grid``) or the head (``atrous_rates``,
    ``aspp_channels``, ``image_pooling``, ``decoder_channels``, ...).
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}. Known models: {', '.join(list_models())}")
    return _REGISTRY[name](num_classes, output_stride, pretrained_backbone, **kwargs)
