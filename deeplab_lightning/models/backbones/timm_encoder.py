"""Any timm encoder as a DeepLab backbone (ConvNeXt, EfficientNet, RegNet, ResNeSt, MobileNetV3 ...)."""
from __future__ import annotations

import timm
import torch

from .base import Backbone, FeatureInfo, check_output_stride, pretrained_weights

class TimmBackbone(Backbone):
    """A timm model built with ``features_only=True`` and ``output_stride``: timm replaces the strides past
    ``output_stride`` by dilation, as DeepLab does to its ResNets (V3 section 3.2), and reports each feature
    map's channels and stride (``feature_info``), from which V3+ takes its stride-4 decoder input.

    Args:
        model_name: a timm model name, optionally with a pretrained tag (``convnext_tiny``,
            ``efficientnet_b3.ra2_in1k``).
        output_stride: 8, 16 or 32. An encoder that cannot dilate (vision transformers, for example) is
            refused naming it.
        pretrained: load timm's ImageNet weights (Hugging Face hub or its cache); the input normalisation is
            the weights' (``pretrained_cfg`` mean and std).

    Input [N, 3, H, W] -> one map per timm feature level, [N, C_i, H / s_i, W / s_i], the last at
    ``output_stride``.
    """

    def __init__(self, model_name: str, *, output_stride: int = 16, pretrained: bool = False) -> None:
        super().__init__()
        self.output_stride = check_output_stride(output_stride)
        if not timm.is_model(model_name.split(".")[0]):
            raise ValueError(f"timm has no model {model_name!r} (timm.list_models('{model_name[:4]}*') lists "
                             f"similar names)")
        hf_repo = getattr(timm.models.get_pretrained_cfg(model_name), "hf_hub_id", None)
        with pretrained_weights(f"timm {model_name}", hf_repo=hf_repo or f"timm/{model_name}"):
            try:
                net = timm.create_model(model_name, pretrained=pretrained, features_only=True,
                                        output_stride=output_stride)
            except (TypeError, RuntimeError) as err:  # no output_stride / features_only for this architecture
                raise ValueError(f"timm encoder {model_name} cannot be built at output_stride {output_stride} "
                                 f"with features_only ({err}); DeepLab needs an encoder that timm can dilate, e.g. "
                                 f"a ResNet, ResNeSt, ConvNeXt, EfficientNet, RegNet or MobileNetV3") from err
        reductions = net.feature_info.reduction()
        if reductions[-1] != output_stride:
            raise ValueError(f"timm encoder {model_name} ends at stride {reductions[-1]}, not the requested "
                             f"output_stride {output_stride}: it does not dilate its last stages")
        self.encoder = net
        self.feature_info = [FeatureInfo(str(name), int(channels), int(stride)) for name, channels, stride in
                             zip(net.feature_info.module_name(), net.feature_info.channels(), reductions)]
        self.input_mean = tuple(net.pretrained_cfg.get("mean", self.input_mean))
        self.input_std = tuple(net.pretrained_cfg.get("std", self.input_std))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.encoder(x))
