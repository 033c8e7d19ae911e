"""The evaluation pipeline: how a batch of padded evaluation images becomes per-image class scores.

:class:`Inference` says how the network is evaluated (scales, flips, sliding window, dense CRF);
:class:`EvaluationPipeline` owns those settings and runs them: it fills each canvas's padding with the network's
mean pixel, calls the network at every scale and flip (window by window where needed), crops the scores back to
each image and refines them with the dense CRF. It calls the network; the network never calls back.

Fixed-shape evaluation (the TF reference's protocol): the data module pads every evaluation image to one size
(513 x 513 for VOC, 1025 x 2049 for Cityscapes; by default, for other data, each image to its own smallest
``16k + 1`` canvas, batches grouped by canvas), and the network sees that shape (one per scale with multi-scale
inference) whatever the batch size.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Any, Protocol

import torch

from ..data.dataset import fill_padding
from .crf import CRFSettings, dense_crf
from .multiscale import check_overlap, predict_multiscale, sliding_window


@dataclass(frozen=True)
class Inference:
    """How evaluation and prediction run the network.

    Args:
        scales: input scales averaged (V3 section 4.3: 0.5 to 1.75 in steps of 0.25); ``(1.0,)``: one pass.
        flip: also average the left-right mirrored inputs.
        window: sliding-window size (H, W) for images larger than it (None: whole images). Images larger than
            the evaluation size always go through a window of the evaluation size.
        overlap: fraction by which neighbouring windows overlap.
        crf: refine the probabilities with the dense CRF (None: off); the metrics before refinement are
            reported too (``evaluation_results(stage, unrefined=True)``, logged under ``<stage>/unrefined/``).
    """

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: tuple[int, int] | None = None
    overlap: float = 1 / 3
    crf: CRFSettings | None = None

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive and at least one, got {self.scales}")
        if self.window is not None and (len(self.window) != 2 or any(
                not isinstance(v, int) or v < 1 for v in self.window)):
            raise ValueError(f"window must be a positive size in pixels (an int or [height, width]) or null, got "
                             f"{self.window}")
        check_overlap(self.overlap)

    @property
    def averaged(self) -> bool:
        """Whether scores are averaged over several scales or flips (else they are the network's logits)."""
        return tuple(self.scales) != (1.0,) or self.flip

    def describe(self) -> str:
        """The settings in words, e.g. ``"scales 0.75-1.5 + flip + dense CRF"`` or ``"single scale"``."""
        scales = tuple(self.scales)
        parts = ["single scale" if scales == (1.0,) else f"scales {min(scales):g}-{max(scales):g}"]
        if self.flip:
            parts.append("flip")
        if self.window is not None:
            parts.append(f"{self.window[0]}x{self.window[1]} windows")
        if self.crf is not None:
            parts.append("dense CRF")
        return " + ".join(parts)

    def replace(self, **changes: Any) -> Inference:
        """A copy with ``changes`` (``scales``, ``flip``, ``window``, ``overlap``, ``crf``; ``crf`` may be a dict
        of :class:`CRFSettings` fields)."""
        if isinstance(changes.get("crf"), dict):
            changes["crf"] = CRFSettings(**changes["crf"])
        for key in ("scales", "window"):
            if changes.get(key) is not None:
                value = changes[key]
                changes[key] = (value, value) if key == "window" and isinstance(value, int) else tuple(value)
        return replace(self, **changes)


class Network(Protocol):
    """What the pipeline calls: ``network(images [N,3,H,W] in [0, 255]) -> logits [N,C,H,W]``, with the mean
    pixel padding is filled with ([1,3,1,1] or None) and the resizing geometry of its upsampling. A network that
    also has ``stride_logits`` (a function: its logits before upsampling, or None) and ``logit_stride`` is
    evaluated at several scales with the TF reference's merge (:func:`.multiscale.predict_multiscale`)."""

    pixel_mean: torch.Tensor | None
    align_corners: bool

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass
class BatchScores:
    """Class scores of each image of a batch at its own size, [C, h_i, w_i]: ``final`` (after the dense CRF when
    configured) and ``unrefined`` (before it; None without CRF)."""

    final: list[torch.Tensor]
    unrefined: list[torch.Tensor] | None = None

    @cached_property
    def labels(self) -> list[torch.Tensor]:
        """Predicted class indices [h_i, w_i] of each image (computed once: the metrics and callbacks share
        them)."""
        return [s.argmax(0) for s in self.final]

    @cached_property
    def unrefined_labels(self) -> list[torch.Tensor] | None:
        """Predicted class indices [h_i, w_i] of each image before the dense CRF (None without it)."""
        return None if self.unrefined is None else [s.argmax(0) for s in self.unrefined]


class PredictedLabels(list):
    """What ``validation_step`` and ``test_step`` return to callbacks: the predicted labels [h_i, w_i] of each image
    of the batch (after the dense CRF when configured), and :attr:`unrefined`, those before it (None without the
    CRF; computed only when a callback reads it)."""

    def __init__(self, scores: BatchScores) -> None:
        super().__init__(scores.labels)
        self._scores = scores

    @property
    def unrefined(self) -> list[torch.Tensor] | None:
        return self._scores.unrefined_labels


def per_image(tensor: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Each image's own top-left region of a padded batch tensor [N, ..., H, W] -> [..., h_i, w_i] each."""
    return [tensor[i, ..., :h, :w] for i, (h, w) in enumerate(sizes)]


def own_extents(tensor: torch.Tensor, sizes: Sequence[tuple[int, int]],
                canvas: tuple[int, int]) -> list[torch.Tensor]:
    """Each image of a padded batch [N, ..., H, W] on the smallest region holding both it and ``canvas``
    ([..., max(h_i, H_c), max(w_i, W_c)]): a 3000 x 20 image batched with a 20 x 3000 one does not run on
    3000 x 3000."""
    return [tensor[i, ..., :max(h, canvas[0]), :max(w, canvas[1])] for i, (h, w) in enumerate(sizes)]


class EvaluationPipeline:
    """Runs a :class:`Network` on evaluation batches as its :attr:`settings` say; see the module docstring."""

    def __init__(self, settings: Inference | None = None) -> None:
        self.settings = settings or Inference()

    def configure(self, settings: Inference | None = None, **changes: Any) -> Inference:
        """Replace the settings (``settings``, then ``changes`` applied to them); returns the previous ones, so a
        caller can restore them."""
        previous = self.settings
        self.settings = (settings or previous).replace(**changes)
        return previous

    def __call__(self, network: Network, batch: dict[str, Any]) -> BatchScores:
        """Scores of a padded batch (``image`` [N,3,H,W], ``size`` the (h, w) of each image, ``padded``, and
        ``canvas`` for fixed-shape evaluation, as :func:`~deeplab_lightning.data.dataset.pad_collate` makes it:
        one (H, W) for the batch, or a list of each image's own).

        A fixed-shape batch runs whole on its canvas (the images of each canvas together when each has its own),
        its padding filled with the mean pixel, as the TF reference evaluates; an image larger than the canvas
        runs alone on its own extent (at least the canvas), window by window at the canvas size; without a
        canvas each image runs alone at its own size. Either way a prediction depends neither on the batch size
        nor on the other images of the batch.
        """
        sizes, canvas = batch["size"], batch.get("canvas")
        if isinstance(canvas, list):
            scores: list[torch.Tensor] = [torch.empty(0)] * len(sizes)
            for own in dict.fromkeys(canvas):
                members = [i for i, c in enumerate(canvas) if c == own]
                images = batch["image"][members, :, :own[0], :own[1]]
                group = self._unrefined(network, images, [sizes[i] for i in members], own, padded=True)
                for i, s in zip(members, group):
                    scores[i] = s
        else:
            scores = self._unrefined(network, batch["image"], sizes, canvas, bool(batch.get("padded")))
        if self.settings.crf is None:
            return BatchScores(scores)
        images = per_image(batch["image"], sizes)
        return BatchScores([self._refine(image, s) for image, s in zip(images, scores)], unrefined=scores)

    def _unrefined(self, network: Network, images: torch.Tensor, sizes: Sequence[tuple[int, int]],
                   canvas: tuple[int, int] | None, padded: bool) -> list[torch.Tensor]:
        """Scores [C, h_i, w_i] of each image of ``images`` [N,3,H,W] before any CRF (see :meth:`__call__`)."""
        if canvas is not None and all(h <= canvas[0] and w <= canvas[1] for h, w in sizes):
            images = fill_padding(images, sizes, network.pixel_mean) if padded else images
            return per_image(self._scores(network, images, canvas), sizes)
        if canvas is not None:  # an image larger than the canvas: each alone on its own extent, window by window
            scores = []
            for image, (h, w) in zip(own_extents(images, sizes, canvas), sizes):
                image = fill_padding(image[None], [(h, w)], network.pixel_mean)
                scores.append(self._scores(network, image, canvas)[0, :, :h, :w])
            return scores
        return [self._scores(network, image[None], None)[0] for image in per_image(images, sizes)]

    def _scores(self, network: Network, images: torch.Tensor, canvas: tuple[int, int] | None) -> torch.Tensor:
        """Class scores [N,C,H,W] of images [N,3,H,W]: the logits in one pass, else the log of the softmax
        probabilities averaged over scales and flips (V3 section 4.3 averages probabilities; the log keeps their
        argmax and makes the loss a cross-entropy). Images larger than ``canvas`` run window by window at it."""
        settings, window = self.settings, self.settings.window
        if canvas is not None and (images.shape[-2] > canvas[0] or images.shape[-1] > canvas[1]):
            window = window or canvas
        if not settings.averaged:
            return network(images) if window is None else sliding_window(network, images, window, settings.overlap)
        stride_logits = getattr(network, "stride_logits", None) if network.align_corners and window is None else None
        if stride_logits is not None:  # whole images in TF's geometry: TF's merge of the scales
            probs = predict_multiscale(stride_logits, images, settings.scales, settings.flip, align_corners=True,
                                       logit_stride=network.logit_stride)
        else:
            probs = predict_multiscale(network, images, settings.scales, settings.flip, window=window,
                                       overlap=settings.overlap, align_corners=network.align_corners)
        return probs.clamp_min(1e-12).log()

    def _refine(self, image: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [C,h,w] after the dense CRF, for one uint8 image [3,h,w] and its scores [C,h,w]."""
        refined = dense_crf(image.permute(1, 2, 0).contiguous(), scores.float().softmax(0),
                            **asdict(self.settings.crf))
        return refined.clamp_min(1e-12).log()
