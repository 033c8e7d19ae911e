"""Named model builders: ``create_model("deeplabv3plus_resnet101", num_classes=21, output_stride=16)``."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from torch import nn

from .backbones.resnet import ResNetBackbone
from .deeplab import DeepLabV3, DeepLabV3Plus

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


# V3 section 4.1/4.3: train at output stride 16; multi-grid (1, 2, 4) in block4 is the paper's best setting.
for _depth in (18, 50, 101):
    _mg = (1, 2, 4) if _depth >= 50 else None
    _REGISTRY[f"deeplabv3_resnet{_depth}"] = partial(_resnet_deeplab, DeepLabV3, _depth, 16, _mg)
    _REGISTRY[f"deeplabv3plus_resnet{_depth}"] = partial(_resnet_deeplab, DeepLabV3Plus, _depth, 16, _mg)


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
