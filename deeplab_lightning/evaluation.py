"""The evaluation pipeline: what turns a batch of padded images into per-image class scores.

One typed object, :class:`Inference`, says how the network is evaluated (scales, flips, sliding window, dense
CRF). :class:`~deeplab_lightning.module.SegmentationModule` owns one; callbacks and the Python API change it
through ``module.configure_inference(...)``, and read metrics through ``module.evaluation_results(stage)``
(a :class:`EvaluationResults`).

Fixed-shape evaluation (the TF reference's protocol): the data module pads every evaluation image to one size
(the smallest ``16k + 1`` holding the split's largest image: 513 x 513 for VOC, 1025 x 2049 for Cityscapes),
the module fills the padding with the network's mean pixel, and the network sees that one shape (one per
scale with multi-scale inference), whatever the images' sizes and the batch size. Scores are then cropped
back to each image.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from .crf import dense_crf
from .inference import Model, predict_multiscale, sliding_window


@dataclass(frozen=True)
class CRFSettings:
    """Dense CRF parameters; the defaults are DeepLab V2's (ResNet-101, VOC; V1 used 5/50/3/3/3)."""

    iterations: int = 10
    bi_w: float = 4.0
    bi_xy_std: float = 67.0
    bi_rgb_std: float = 3.0
    pos_w: float = 3.0
    pos_xy_std: float = 1.0


@dataclass(frozen=True)
class Inference:
    """How evaluation and prediction run the network.

    Args:
        scales: input scales averaged (V3 section 4.3: 0.5 to 1.75 in steps of 0.25); ``(1.0,)`` is plain.
        flip: also average the left-right mirrored inputs.
        window: sliding-window size (H, W) for images larger than it (None: whole images). Images larger than
            the evaluation size always go through a window of the evaluation size.
        overlap: fraction by which neighbouring windows overlap.
        crf: refine the probabilities with the dense CRF (None: off); the metrics before refinement are
            reported too, under ``<stage>/unrefined/``.
    """

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: tuple[int, int] | None = None
    overlap: float = 1 / 3
    crf: CRFSettings | None = None

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive and at least one, got {self.scales}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")

    @property
    def plain(self) -> bool:
        """One scale, no flip, no window: the scores are the network's logits."""
        return tuple(self.scales) == (1.0,) and not self.flip and self.window is None

    def replace(self, **changes: Any) -> Inference:
        """A copy with ``changes`` (``scales``, ``flip``, ``window``, ``overlap``, ``crf``)."""
        if "crf" in changes and isinstance(changes["crf"], dict):
            changes["crf"] = CRFSettings(**changes["crf"])
        for key in ("scales", "window"):
            if changes.get(key) is not None:
                value = changes[key]
                changes[key] = (value, value) if key == "window" and isinstance(value, int) else tuple(value)
        return replace(self, **changes)

    def scores(self, model: Model, images: torch.Tensor, *, align_corners: bool,
               eval_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Class scores [N,C,H,W] for images [N,3,H,W]: logits when :attr:`plain`, else log-probabilities
        averaged over scales and flips (both have the same argmax and the same cross-entropy).

        A canvas larger than ``eval_size`` (an image larger than the evaluation size) runs window by window at
        that size, so the network still sees one shape.
        """
        window = self.window
        if eval_size is not None and (images.shape[-2] > eval_size[0] or images.shape[-1] > eval_size[1]):
            window = window or eval_size
        if self.plain and window is None:
            return model(images)
        if tuple(self.scales) == (1.0,) and not self.flip:
            return sliding_window(model, images, window, self.overlap)
        probs = predict_multiscale(model, images, self.scales, self.flip, window=window, overlap=self.overlap,
                                   align_corners=align_corners)
        return probs.clamp_min(1e-12).log()

    def refine(self, image: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [C,h,w] after the dense CRF, for one uint8 image [3,h,w] and its scores [C,h,w]."""
        assert self.crf is not None
        refined = dense_crf(image.permute(1, 2, 0).contiguous(), scores.float().softmax(0), **asdict(self.crf))
        return refined.clamp_min(1e-12).log()


@dataclass(frozen=True)
class EvaluationResults:
    """Metrics of one whole split: mIoU and pixel accuracy in [0, 1], per-class IoU [C] (NaN for a class absent
    from targets and predictions), the confusion matrix [C, C] (rows: target) and the global step of the
    weights evaluated."""

    mIoU: float
    pixel_acc: float
    iou: torch.Tensor
    confmat: torch.Tensor
    step: int = 0


def smallest_eval_size(sizes: Sequence[tuple[int, int]], multiple: int = 16) -> tuple[int, int]:
    """The smallest (H, W) of the form ``multiple * k + 1`` that holds every (h, w) in ``sizes``
    (VOC's 500 x 500 at most -> 513 x 513; Cityscapes 1024 x 2048 -> 1025 x 2049, as in the TF reference)."""
    if not sizes:
        raise ValueError("no image sizes to derive an evaluation size from")
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    up = lambda n: -(-(n - 1) // multiple) * multiple + 1  # noqa: E731
    return up(h), up(w)
