"""ResNet-18/50/101 with atrous convolution and multi-grid (DeepLab V2 section 3.1, V3 section 3.2).

The network is torchvision's ResNet, so its parameter names are torchvision's and its ImageNet weights load
strictly (``fc.*`` aside). Strides after ``output_stride`` are replaced by dilation. In the first unit of a
dilated stage the 3x3 conv that held the stride keeps the rate of the features it reads (the previous
stage's), as the TF reference's ``stack_blocks_dense`` and torchvision's ``replace_stride_with_dilation`` do:
the network then computes the same function at output stride 32, 16 and 8 (the denser output subsampled), so
ImageNet weights, and a model trained at OS16 then evaluated at OS8 (V3 section 4.1), see the geometry they
were trained with. Multi-grid (V3 section 3.2) multiplies the rates of layer4's unit ``i`` by
``multi_grid[i]``. Deviation: the paper gives block4's rates at OS16 with (1, 2, 4) as 2 * (1, 2, 4) =
(2, 4, 8) for TF-slim's ResNet, whose stride sits in the previous block's last unit; in torchvision's layout
layer4's first unit holds the stride and reads stride-16 features, so the same rule gives (1, 4, 8) here
((2, 8, 16) at OS8).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torchvision import models as tvm

from .base import Backbone, FeatureInfo, check_output_stride, pretrained_weights

_RESNETS = {
    18: (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    34: (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    50: (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
    101: (tvm.resnet101, tvm.ResNet101_Weights.IMAGENET1K_V1),
}
_STAGES = ("layer1", "layer2", "layer3", "layer4")
_STAGE_STRIDES = (4, 8, 16, 32)


def _three_by_three_convs(block: nn.Module) -> list[nn.Conv2d]:
    return [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


class ResNetBackbone(Backbone):
    """ResNet feature extractor returning the outputs of ``layer1`` (stride 4) ... ``layer4``.

    Args:
        depth: 18, 34, 50 or 101.
        output_stride: 8, 16 or 32; stages past it are dilated instead of strided.
        multi_grid: unit rates of the last stage, one per block of layer4 (2 for ResNet-18, 3 otherwise);
            ``None`` means all ones.
        pretrained: load torchvision's ImageNet weights (needs the weights file or network access).
        layout: ``"torchvision"``, or ``"caffe"``: MSRA's Caffe ResNet, that of DeepLab v2's released ResNet-101
            (its ``prototxt``, for its converted weights): a stage's stride in its first unit's 1x1 conv (``res3a_
            branch2a``) instead of the 3x3, the stem's max pool without padding and rounding up (Caffe's
            pooling), and in a dilated stage every 3x3 conv at the stage's rate, the first unit's too (there the
            stride held by the 1x1 conv is what is removed: ``res4a_branch2b`` has dilation 2 at OS 8). Same
            parameters; 64 instead of 65 features at 513.

    Input [N, 3, H, W] -> list of 4 maps, [N, C_i, ceil(H / s_i), ceil(W / s_i)].
    """

    def __init__(
        self,
        depth: int = 101,
        *,
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = None,
        pretrained: bool = False,
        layout: Literal["torchvision", "caffe"] = "torchvision",
    ) -> None:
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"ResNet depth must be one of {sorted(_RESNETS)}, got {depth}")
        if layout not in ("torchvision", "caffe") or (layout == "caffe" and depth < 50):
            raise ValueError(f"ResNet layout must be 'torchvision' or 'caffe' (ResNet-50/101 only), got {layout!r} "
                             f"for ResNet-{depth}")
        check_output_stride(output_stride)
        builder, weights = _RESNETS[depth]
        with pretrained_weights(f"ResNet-{depth}", url=weights.url):
            net = builder(weights=weights if pretrained else None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        for name in _STAGES:
            setattr(self, name, getattr(net, name))
        self.depth = depth
        self.output_stride = output_stride

        n_last = len(self.layer4)
        multi_grid = tuple(multi_grid) if multi_grid is not None else (1,) * n_last
        if len(multi_grid) != n_last:
            raise ValueError(
                f"multi_grid={list(multi_grid)} has {len(multi_grid)} entries but layer4 of ResNet-{depth} has "
                f"{n_last} blocks; give one unit rate per block"
            )
        self.multi_grid = multi_grid
        self.layout = layout
        if layout == "caffe":
            self._caffe_layout()
        reads = 1  # the rate of the features the next 3x3 conv reads
        for name in _STAGES:
            rate, stage = self.stage_rate(name), getattr(self, name)
            unit = multi_grid if name == "layer4" else (1,) * len(stage)
            if layout == "caffe":
                reads = rate  # the stride sat in the 1x1 conv before every 3x3 conv of the stage
            for block, u in zip(stage, unit):
                for conv in _three_by_three_convs(block):
                    conv.dilation, conv.padding = (reads * u, reads * u), (reads * u, reads * u)
                    if rate > 1 and conv.stride != (1, 1):
                        conv.stride = (1, 1)
                        reads = rate  # past the stride it replaces
            if rate > 1:
                self._remove_stride(stage[0])  # the shortcut's strided 1x1 conv

        expansion = 4 if depth >= 50 else 1
        self.feature_info = [
            FeatureInfo(name, 64 * 2**i * expansion, min(stride, output_stride))
            for i, (name, stride) in enumerate(zip(_STAGES, _STAGE_STRIDES))
        ]

    def stage_rate(self, name: str = "layer4") -> int:
        """Atrous rate of a stage past its first unit, before multi-grid (block4 at OS16: 2, at OS8: 4)."""
        return max(_STAGE_STRIDES[_STAGES.index(name)] // self.output_stride, 1)

    def _caffe_layout(self) -> None:
        """Strides of the first units in their 1x1 conv (conv1), the stem's pool as Caffe's (see ``layout``)."""
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
        for name in _STAGES:
            first = getattr(self, name)[0]
            if first.conv2.stride != (1, 1):
                first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)

    @staticmethod
    def _remove_stride(block: nn.Module) -> None:
        for m in block.modules():
            if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
                m.stride = (1, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for name in _STAGES:
            x = getattr(self, name)(x)
            features.append(x)
        return features
