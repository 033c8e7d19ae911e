"""VGG-16 with atrous convolution, output stride 8 (DeepLab V1 section 3.1, V2 section 4.1)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from .base import Backbone, FeatureInfo, pretrained_weights

# Indices of torchvision's vgg16().features: pooling layers and the conv5 block.
_POOLS = (4, 9, 16, 23, 30)
_CONV5 = (24, 26, 28)


class VGG16Backbone(Backbone):
    """VGG-16 conv layers as DeepLab converts them (V1 section 3.1):

    * pool1-3: 3x3 max pooling, stride 2, padding 1 (the DeepLab prototxt's pooling);
    * pool4 and pool5: 3x3, stride 1, padding 1, so the output stride is 8;
    * conv5_1-3: dilation 2, compensating pool4's removed stride.

    ``features`` keeps torchvision's indices, so ``VGG16_Weights.IMAGENET1K_V1`` loads strictly into it
    (``classifier.*`` aside: with ``pretrained`` it is kept in ``imagenet_fc`` for the heads to subsample into
    fc6/fc7). Input [N,3,H,W] -> [conv3_3 [N,256,H/4,W/4], pool5 [N,512,H/8,W/8]].

    Two options give the released Caffe model's network (DeepLab-LargeFOV's ``test.prototxt``), for its converted
    weights: ``ceil_mode`` (Caffe's pooling rounds its output size up: one more row on even sizes) and ``pool5a``
    (that prototxt's 3x3 stride-1 average pooling after pool5, padding counted as Caffe counts it; not in the
    paper's text). Both leave the parameters and, on odd sizes (513), ``ceil_mode`` leaves the outputs unchanged.
    """

    output_stride = 8

    def __init__(self, *, pretrained: bool = False, ceil_mode: bool = False, pool5a: bool = False) -> None:
        super().__init__()
        weights = tvm.VGG16_Weights.IMAGENET1K_V1 if pretrained else None
        with pretrained_weights("VGG-16", url=tvm.VGG16_Weights.IMAGENET1K_V1.url):
            net = tvm.vgg16(weights=weights)
        features = net.features
        for i in _POOLS:
            stride = 2 if i in _POOLS[:3] else 1
            features[i] = nn.MaxPool2d(3, stride=stride, padding=1, ceil_mode=ceil_mode)
        for i in _CONV5:
            features[i].dilation, features[i].padding = (2, 2), (2, 2)
        if pool5a:
            features.append(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True))
        self.features = features
        # ImageNet fc6/fc7 weights, kept (unregistered) for the heads' initialisation; None without weights.
        self.imagenet_fc = {k: v.detach() for k, v in net.classifier.state_dict().items()} if pretrained else None
        self.feature_info = [FeatureInfo("conv3_3", 256, 4), FeatureInfo("pool5", 512, 8)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        low_level = self.features[:16](x)  # conv3_3 + ReLU, stride 4
        return [low_level, self.features[16:](low_level)]
