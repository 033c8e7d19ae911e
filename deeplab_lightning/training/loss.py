"""The training loss: pixel-wise cross-entropy, optionally class-weighted or over the hardest pixels only."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationLoss(nn.Module):
    """Cross-entropy of logits [N,C,H,W] against labels [N,H,W]; see ``SegmentationModule``'s ``class_weights``
    and ``top_k_percent_pixels``. No host sync."""

    def __init__(self, num_classes: int, ignore_index: int = 255, class_weights: Sequence[float] | None = None,
                 top_k_percent_pixels: float = 1.0) -> None:
        super().__init__()
        if class_weights is not None and (len(class_weights) != num_classes or not all(
                math.isfinite(w) and w >= 0 for w in class_weights) or not any(w > 0 for w in class_weights)):
            raise ValueError(f"model.class_weights needs {num_classes} finite, non-negative weights (one per class, "
                             f"at least one above 0), got {list(class_weights)}")
        if not 0 < top_k_percent_pixels <= 1:
            raise ValueError(f"model.top_k_percent_pixels must be in (0, 1], got {top_k_percent_pixels}")
        self.ignore_index, self.top_k_percent_pixels = ignore_index, top_k_percent_pixels
        self.register_buffer("class_weights", None if class_weights is None else torch.tensor(
            class_weights, dtype=torch.float32), persistent=False)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The (class-weighted) mean over the non-ignored pixels (0, not NaN, when all are ignored), or with
        ``top_k_percent_pixels < 1`` the mean of the hardest pixels' losses as the TF reference computes it."""
        weights = self.class_weights
        per_pixel = F.cross_entropy(logits, mask, weight=weights, ignore_index=self.ignore_index, reduction="none")
        if self.top_k_percent_pixels < 1:
            k = max(1, int(self.top_k_percent_pixels * per_pixel.numel()))
            hardest = per_pixel.flatten().topk(k).values
            return hardest.sum() / (hardest > 0).sum().clamp_min(1)
        valid = mask != self.ignore_index
        if weights is None:
            return per_pixel.sum() / valid.sum().clamp_min(1)
        pixel_weights = weights[mask.clamp(0, len(weights) - 1)] * valid
        return per_pixel.sum() / pixel_weights.sum().clamp_min(1e-12)
