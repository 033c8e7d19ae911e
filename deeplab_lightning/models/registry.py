"""Named model builders: ``create_model("deeplabv3plus_resnet101", num_classes=21, output_stride=16)``."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

from torch import nn

from .backbones.base import Backbone
from .backbones.mobilenet import MobileNetV2Backbone, MobileNetV3LargeBackbone
from .backbones.resnet import ResNetBackbone
from .backbones.resnet_beta import ResNetBetaBackbone
from .backbones.timm_encoder import TimmBackbone
from .backbones.vgg import VGG16Backbone
from .backbones.xception import Xception65Backbone
from .convert import loading_weights, torchvision_deeplab
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
    backbone_kwargs: dict[str, Any] | None = None,
    **head_kwargs,
) -> nn.Module:
    settings, kwargs = _backbone_settings(backbone_kwargs)
    backbone = ResNetBackbone(
        depth,
        output_stride=output_stride or default_output_stride,
        multi_grid=multi_grid if multi_grid is not None else default_multi_grid,
        pretrained=pretrained_backbone,
        **kwargs,
    )
    return cls(configure_backbone(backbone, **settings), num_classes, **head_kwargs)


def _vgg_deeplab(cls: type, num_classes: int, output_stride: int | None, pretrained_backbone: bool, *,
                 backbone_kwargs: dict[str, Any] | None = None, **head_kwargs) -> nn.Module:
    if output_stride not in (None, 8):
        raise ValueError(f"The atrous VGG-16 of DeepLab V1/V2 has output stride 8 only, got {output_stride}")
    settings, kwargs = _backbone_settings(backbone_kwargs)
    return cls(configure_backbone(VGG16Backbone(pretrained=pretrained_backbone, **kwargs), **settings), num_classes,
               **head_kwargs)


# Backbone settings any backbone takes (applied by configure_backbone); the others go to its constructor.
GENERIC_BACKBONE_SETTINGS = ("pixel_mean", "pixel_std", "bn_eps")


def _backbone_settings(backbone_kwargs: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``model_kwargs.backbone_kwargs`` split into the generic settings and the constructor's arguments."""
    kwargs = dict(backbone_kwargs or {})
    return {k: kwargs.pop(k) for k in GENERIC_BACKBONE_SETTINGS if k in kwargs}, kwargs


def configure_backbone(backbone: Backbone, *, pixel_mean: Sequence[float] | None = None,
                       pixel_std: Sequence[float] | None = None, bn_eps: float | None = None) -> Backbone:
    """``backbone`` with another input range than its own, ``(x - pixel_mean) / pixel_std`` on RGB values in
    [0, 255] (e.g. 127.5 / 127.5 for TF DeepLab's [-1, 1]; Caffe's mean pixel and 1), or another BatchNorm epsilon
    (e.g. 1e-3, TF's MobileNetV2): what weights trained elsewhere need (``deeplab-lightning convert`` sets them).
    The network reads the range when it is built, so this runs before."""
    for name, value in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
        if value is not None:
            if len(value) != 3 or (name == "pixel_std" and min(value) <= 0):
                raise ValueError(f"model_kwargs.backbone_kwargs.{name} needs one value per RGB channel, in "
                                 f"[0, 255] units (std > 0), got {value!r}")
            setattr(backbone, name.replace("pixel", "input"), tuple(float(v) / 255 for v in value))
    if bn_eps is not None:
        for m in backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = float(bn_eps)
    return backbone


def build_backbone(name: str, output_stride: int, pretrained: bool, multi_grid: Sequence[int] | None = None,
                   **backbone_kwargs: Any) -> Backbone:
    """A backbone by name: ``resnet18`` / ``resnet50`` / ``resnet101`` (torchvision weights),
    ``resnet50_beta`` / ``resnet101_beta`` (TF DeepLab's ResNet-v1-beta layout), ``xception65`` (aligned
    Xception-65), ``mobilenetv2``, ``mobilenet_v3_large``, or ``timm/<model>``: any timm encoder that dilates
    (:class:`TimmBackbone`). ``backbone_kwargs``: the generic settings of
    :func:`configure_backbone` and the backbone's own arguments (e.g. MobileNetV2's ``depth_multiplier``)."""
    settings, kwargs = _backbone_settings(backbone_kwargs)
    if name.startswith("timm/"):
        backbone = TimmBackbone(name[len("timm/"):], output_stride=output_stride, pretrained=pretrained, **kwargs)
        return configure_backbone(backbone, **settings)
    fixed = {"xception65": Xception65Backbone, "mobilenetv2": MobileNetV2Backbone,
             "mobilenet_v3_large": MobileNetV3LargeBackbone}
    if name in fixed:
        return configure_backbone(fixed[name](output_stride=output_stride, pretrained=pretrained, **kwargs),
                                  **settings)
    if name in ("resnet50_beta", "resnet101_beta"):
        backbone = ResNetBetaBackbone(int(name[len("resnet"):-len("_beta")]), output_stride=output_stride,
                                      multi_grid=multi_grid, pretrained=pretrained, **kwargs)
        return configure_backbone(backbone, **settings)
    if name.startswith("resnet") and name[len("resnet"):].isdigit():
        return configure_backbone(ResNetBackbone(int(name[len("resnet"):]), output_stride=output_stride,
                                                 multi_grid=multi_grid, pretrained=pretrained, **kwargs), **settings)
    raise ValueError(f"Unknown backbone {name!r}: resnet18, resnet50, resnet101, resnet101_beta, xception65, "
                     f"mobilenetv2, mobilenet_v3_large or timm/<model name> (e.g. timm/convnext_tiny)")


def _any_backbone_deeplab(cls: type, num_classes: int, output_stride: int | None, pretrained_backbone: bool, *,
                          backbone: str | None = None, multi_grid: Sequence[int] | None = None,
                          backbone_kwargs: dict[str, Any] | None = None, **head_kwargs) -> nn.Module:
    if backbone is None:
        raise ValueError(f"Model {cls.__name__.lower()} needs a backbone: model_kwargs: {{backbone: "
                         f"timm/convnext_tiny}} (or resnet50, xception65 ...)")
    if backbone == "xception65":  # V3+ section 4.3: separable ASPP and decoder convs ("sep" rows of table 5)
        head_kwargs.setdefault("separable", True)
    if backbone == "mobilenetv2":  # the TF reference's MobileNetV2 models: ASPP of 1x1 conv + image pooling only
        head_kwargs.setdefault("atrous_rates", ())
    return cls(build_backbone(backbone, output_stride or 16, pretrained_backbone, multi_grid,
                              **(backbone_kwargs or {})), num_classes, **head_kwargs)


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
_REGISTRY["deeplabv3plus_xception65"] = partial(_any_backbone_deeplab, DeepLabV3Plus, backbone="xception65")
# Mobile backbones: the TF reference's DeepLabV3 MobileNetV2 and torchvision's DeepLabV3 MobileNetV3-Large.
_REGISTRY["deeplabv3_mobilenetv2"] = partial(_any_backbone_deeplab, DeepLabV3, backbone="mobilenetv2")
_REGISTRY["deeplabv3_mobilenet_v3_large"] = partial(_any_backbone_deeplab, DeepLabV3, backbone="mobilenet_v3_large")
# V3 / V3+ on any backbone (model_kwargs.backbone), e.g. a timm encoder: deeplabv3plus + timm/convnext_tiny.
ANY_BACKBONE: dict[str, Callable[..., nn.Module]] = {
    "deeplabv3": partial(_any_backbone_deeplab, DeepLabV3),
    "deeplabv3plus": partial(_any_backbone_deeplab, DeepLabV3Plus),
}


# The registry's names as a type: the command line lists them in --help and refuses others at parse time.
ModelName = Literal[tuple(sorted(_REGISTRY) + sorted(ANY_BACKBONE))]  # type: ignore[valid-type]


def list_models() -> list[str]:
    """The named variants (each builds without further arguments), sorted; :func:`create_model` also takes
    the names of :data:`ANY_BACKBONE` with a ``backbone``."""
    return sorted(_REGISTRY)


def create_model(
    name: str,
    num_classes: int = 21,
    *,
    output_stride: int | None = None,
    pretrained_backbone: bool = False,
    weights: Literal["torchvision"] | None = None,
    **kwargs,
) -> nn.Module:
    """Build a DeepLab variant by name; ``output_stride=None`` takes the paper's training value.

    Extra keyword arguments go to the backbone (``multi_grid``; ``backbone_kwargs``: a dict of the backbone's
    own arguments and the settings of :func:`configure_backbone`, the input range and BatchNorm epsilon) or the
    head (``atrous_rates``, ``aspp_channels``, ``image_pooling``, ``decoder_channels``, ...). ``deeplabv3``
    and ``deeplabv3plus`` take any backbone by name (``backbone="timm/convnext_tiny"``, see
    :func:`build_backbone`).
    ``weights="torchvision"`` gives torchvision's trained ``deeplabv3_resnet50`` / ``deeplabv3_resnet101`` /
    ``deeplabv3_mobilenet_v3_large`` (its architecture, COCO-trained on the 21 VOC classes; see
    :func:`~deeplab_lightning.models.convert.torchvision_deeplab`).
    """
    if weights is not None:
        if weights != "torchvision" or output_stride is not None or kwargs or num_classes != 21:
            raise ValueError(f"weights={weights!r}: only weights='torchvision' with 21 classes and torchvision's "
                             f"architecture (no output_stride or model arguments) is available, got "
                             f"num_classes={num_classes}, output_stride={output_stride}, {kwargs or ''}")
        return torchvision_deeplab(name)
    builder = _REGISTRY.get(name) or ANY_BACKBONE.get(name)
    if builder is None:
        raise ValueError(f"Unknown model {name!r}. Known models: {', '.join(list_models())}; with any backbone "
                         f"(backbone=...): {', '.join(ANY_BACKBONE)}")
    return builder(num_classes, output_stride, pretrained_backbone and loading_weights(), **kwargs)
