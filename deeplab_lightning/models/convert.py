"""Conversion of torchvision's DeepLabV3 models into this project's :class:`DeepLabV3`, and their
COCO-trained weights by name."""
from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator

from torch import nn
from torchvision.models import segmentation as tv_segmentation

from .backbones.base import pretrained_weights
from .backbones.mobilenet import MobileNetV3LargeBackbone
from .backbones.resnet import ResNetBackbone
from .deeplab import DeepLabV3

# torchvision key prefix -> this project's; the ASPP image-pooling branch is convs.4 (pool, conv, bn, relu).
_KEY_MAP = [
    (r"^backbone\.(\d+)\.", r"backbone.features.\1."),  # MobileNetV3's features, numbered
    (r"^backbone\.", "backbone."),
    (r"^classifier\.0\.convs\.4\.1\.", "aspp.branches.4.conv."),
    (r"^classifier\.0\.convs\.4\.2\.", "aspp.branches.4.bn."),
    (r"^classifier\.0\.convs\.(\d)\.", r"aspp.branches.\1."),
    (r"^classifier\.0\.project\.([01])\.", r"aspp.project.0.\1."),
    (r"^classifier\.([124])\.", lambda m: f"classifier.{int(m.group(1)) - 1}."),
]


def _map_key(key: str) -> str:
    for pattern, repl in _KEY_MAP:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise KeyError(f"unexpected key in torchvision DeepLabV3 state dict: {key}")


def from_torchvision(tv_model: nn.Module) -> DeepLabV3:
    """Convert torchvision's ``deeplabv3_resnet50`` / ``deeplabv3_resnet101`` / ``deeplabv3_mobilenet_v3_large``
    (weights included).

    torchvision fixes the output stride (8 for ResNets, 16 for MobileNetV3) with rates (12, 24, 36), dilates
    the first ResNet unit of each dilated stage at the previous rate, adds a 3x3 conv before the classifier and
    uses dropout 0.5 after the ASPP projection, and resizes with ``align_corners=False``; the converted model
    keeps all of these (its conv geometry is copied), so it gives the same outputs in eval mode. It takes RGB in
    [0, 255] like every DeepLab here and normalises it as torchvision's transforms do. The auxiliary FCN head,
    if any, is dropped.
    """
    body = tv_model.backbone
    if hasattr(body, "layer3"):
        depth = {6: 50, 23: 101}.get(len(body.layer3))
        backbone, prefix = (ResNetBackbone(depth, output_stride=8) if depth else None), ""
    else:  # MobileNetV3-Large's features, the last at stride 16
        backbone = MobileNetV3LargeBackbone(output_stride=16) if len(body) == 17 else None
        prefix = "features."
    if backbone is None:
        raise ValueError("from_torchvision expects torchvision's deeplabv3_resnet50, deeplabv3_resnet101 or "
                         "deeplabv3_mobilenet_v3_large")
    aspp = tv_model.classifier[0]
    rates = tuple(branch[0].dilation[0] for branch in list(aspp.convs)[1:-1])
    num_classes = tv_model.classifier[-1].out_channels
    model = DeepLabV3(backbone, num_classes, atrous_rates=rates, aspp_dropout=aspp.project[-1].p,
                      extra_conv=True, align_corners=False)
    source = dict(body.named_modules())
    for name, conv in model.backbone.named_modules():
        if isinstance(conv, nn.Conv2d):
            ref = source[name.removeprefix(prefix)]
            conv.stride, conv.dilation, conv.padding = ref.stride, ref.dilation, ref.padding
    state = {_map_key(k): v for k, v in tv_model.state_dict().items() if not k.startswith("aux_classifier.")}
    model.load_state_dict(state, strict=True)
    return model


# Registry name -> torchvision's builder and its weights trained on COCO's images of the 20 VOC classes.
TORCHVISION_WEIGHTS = {
    "deeplabv3_resnet50": (tv_segmentation.deeplabv3_resnet50,
                           tv_segmentation.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1),
    "deeplabv3_resnet101": (tv_segmentation.deeplabv3_resnet101,
                            tv_segmentation.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1),
    "deeplabv3_mobilenet_v3_large": (tv_segmentation.deeplabv3_mobilenet_v3_large,
                                     tv_segmentation.DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1),
}
_LOAD_WEIGHTS = contextvars.ContextVar("load_weights", default=True)


@contextlib.contextmanager
def architectures_only() -> Iterator[None]:
    """Inside, :func:`~deeplab_lightning.models.create_model` builds networks without loading any pretrained
    weights (ImageNet backbones, torchvision's trained models): for networks whose weights come from a
    checkpoint next, so nothing is downloaded."""
    token = _LOAD_WEIGHTS.set(False)
    try:
        yield
    finally:
        _LOAD_WEIGHTS.reset(token)


def loading_weights() -> bool:
    """False inside :func:`architectures_only`."""
    return _LOAD_WEIGHTS.get()


def torchvision_deeplab(name: str) -> DeepLabV3:
    """torchvision's trained DeepLabV3 ``name`` (a key of :data:`TORCHVISION_WEIGHTS`) converted by
    :func:`from_torchvision`: torchvision's architecture (output stride 8 for ResNets, 16 for MobileNetV3,
    rates 12/24/36, a 3x3 conv before the classifier, ``align_corners=False``) with its weights trained on COCO
    images of the 20 VOC classes + background, read from ``$TORCH_HOME/hub/checkpoints`` or downloaded.
    ``model.class_names`` are torchvision's VOC names, ``model.transforms`` its preprocessing preset (resize
    the shorter side to 520; the model normalises its uint8 input itself)."""
    if name not in TORCHVISION_WEIGHTS:
        raise ValueError(f"torchvision has trained weights for {', '.join(TORCHVISION_WEIGHTS)}, not {name!r}")
    builder, weights = TORCHVISION_WEIGHTS[name]
    with pretrained_weights(f"torchvision's {name} ({weights})", url=weights.url,
                            kind="trained weights (COCO images of the 20 VOC classes)",
                            setting="leave model.weights unset to start from ImageNet weights or from scratch"):
        tv_model = builder(weights=weights if loading_weights() else None, weights_backbone=None,
                           num_classes=len(weights.meta["categories"]))
    model = from_torchvision(tv_model)
    model.class_names = ["background", *weights.meta["categories"][1:]]
    model.transforms = weights.transforms()
    return model
