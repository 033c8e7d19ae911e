"""What every backbone declares: the channels and stride of each feature map it returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureInfo:
    """One returned feature map: its name, number of channels and stride w.r.t. the input."""

    name: str
    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class: ``forward(x [N,3,H,W]) -> list of feature maps``, one per ``feature_info`` entry.

    The last feature map is the encoder output, at ``output_stride``.
    """

    feature_info: list[FeatureInfo]
    output_stride: int

    def feature_index(self, stride: int) -> int:
        """Index of the last returned feature map whose stride is ``stride``."""
        matches = [i for i, info in enumerate(self.feature_info) if info.stride == stride]
        if not matches:
            have = [info.stride for info in self.feature_info]
            raise ValueError(f"{type(self).__name__} returns no feature map of stride {stride} (strides: {have})")
        return matches[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
