"""Boundary metrics of a whole split, accumulated as integer counts: trimap mIoU and pixel accuracy (DeepLab V1
section 5 and Fig. 5, V3+ section 4.4 and Fig. 5a), Boundary IoU (Cheng et al., CVPR 2021) and the boundary F1
score (Csurka et al., BMVC 2013).

Definitions, for one image of size h x w on its own extent (never the padded canvas):

- **Distance** is the chessboard distance max(|dy|, |dx|), measured inside the image: a band of width ``r`` is a
  morphological dilation by the (2r+1) x (2r+1) square, computed on tensors by max-pooling in O(log r) shifted
  maxima per axis (:func:`square_window`). Pixels outside the image do not exist: the **image border is not a
  contour**, and nothing outside it is void.
- **Void** pixels are those whose target is the ignore index (or outside ``[0, C)``). They are in no class's mask,
  in the target *and* in the prediction (the prediction is masked with the target's void before any contour is
  drawn), and they are never counted. So a class mask's contour runs along the void band on both sides, and a
  prediction that equals the target on every labelled pixel scores 1 in every metric.
- **Trimap** (V1 section 5: "the mean IOU for those pixels that are located within a narrow band (called
  trimap) of 'void' labels"; V3+ section 4.4: "morphological dilation on 'void' label annotations"): for each
  band width ``w``, the confusion matrix of the labelled pixels within distance ``w`` of a seed pixel; its mIoU and
  pixel accuracy as :class:`~.metrics.SegmentationMetrics` computes them. Seeds: ``void`` = the void pixels (VOC and
  the toy data, whose void marks object boundaries); ``labels`` = the pixels whose target label (void included)
  differs from a 4-neighbour's (data without a void band: Cityscapes, your own folders).
- **Boundary IoU** (Cheng et al. section 3): class c's boundary region in a label map is the set of its pixels
  within distance ``d`` of its mask's contour, i.e. those with a pixel of another label (or void) within ``d``
  (the reference code's ``mask - erode(mask)`` with a 3 x 3 kernel ``d`` times: the same chessboard distance).
  ``d`` is 2 % of the image diagonal, rounded (at least 1), as the paper and its code (``dilation_ratio=0.02``),
  or a fixed number of pixels. Per class, |G_d ∩ P_d| and |G_d ∪ P_d| are summed over the split; IoU_c is their
  ratio and the mean skips classes with an empty union (NaN), as mIoU does.
- **Boundary F1** (Csurka et al. section 4): class c's contour is its boundary region at ``d = 1`` (pixels with an
  8-neighbour of another label). A predicted contour pixel is matched when a target contour pixel of its class
  lies within the tolerance ``theta`` (and vice versa); precision = matched / all predicted contour pixels, recall
  = matched / all target contour pixels, F1 their harmonic mean; ``theta`` is 0.75 % of the image diagonal,
  rounded (at least 1; MATLAB's ``bfscore`` default), or a fixed number of pixels. A class with contours on one
  side only scores 0; with none on either side, NaN (left out of the mean).

Deviations, stated: Cheng et al.'s code pads each mask with zeros, so a mask cut by the image border has a contour
there; here the border is not a contour (an image crop does not create object boundaries). Csurka et al. average a
per-image score; here, as every metric of this project, counts are summed over the whole split and all processes
first (never a mean of per-image scores). Neither paper defines void pixels; the rule above is this project's.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torchmetrics import Metric

TRIMAP_WIDTHS = (2, 4, 8, 12, 16, 20, 30, 40)  # px: the range of V3+ Fig. 5a's x axis
TRIMAP_BANDS = ("auto", "void", "labels")
TRIMAP_SEEDS = {"void": "void pixels", "labels": "label boundaries (a 4-neighbour with another label)"}
VOID = -1  # void pixels in the label maps the boundaries are drawn on


@dataclass(frozen=True)
class BoundarySettings:
    """What the boundary metrics measure (``model.boundary_metrics`` in a config; see the module docstring).

    Args:
        trimap_widths: band widths in pixels, increasing (default: V3+ Fig. 5a's range).
        trimap_band: ``void`` (bands around void pixels, the papers' trimap), ``labels`` (bands around label
            boundaries) or ``auto``: ``void`` where the data module declares that its void marks object
            boundaries (VOC, the toy data), else ``labels``.
        boundary_distance: Boundary IoU's ``d`` in pixels; None: ``boundary_distance_ratio`` of each image's
            diagonal.
        boundary_distance_ratio: ``d`` as a share of the image diagonal (Cheng et al.: 0.02).
        f1_tolerance: the boundary F1's matching tolerance in pixels; None: ``f1_tolerance_ratio`` of the diagonal.
        f1_tolerance_ratio: the tolerance as a share of the image diagonal (MATLAB ``bfscore``: 0.0075).
    """

    trimap_widths: tuple[int, ...] = TRIMAP_WIDTHS
    trimap_band: Literal["auto", "void", "labels"] = "auto"
    boundary_distance: int | None = None
    boundary_distance_ratio: float = 0.02
    f1_tolerance: int | None = None
    f1_tolerance_ratio: float = 0.0075

    def __post_init__(self) -> None:
        key = "model.boundary_metrics"
        widths = tuple(self.trimap_widths)
        if not widths or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths) or any(
                a >= b for a, b in zip(widths, widths[1:])):
            raise ValueError(f"{key}.trimap_widths must be increasing positive widths in pixels, e.g. [2, 4, 8], "
                             f"got {list(self.trimap_widths)}")
        object.__setattr__(self, "trimap_widths", widths)
        if self.trimap_band not in TRIMAP_BANDS:
            raise ValueError(f"{key}.trimap_band must be one of {', '.join(TRIMAP_BANDS)}, got {self.trimap_band!r}")
        for name, least in (("boundary_distance", 1), ("f1_tolerance", 0)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise ValueError(f"{key}.{name} must be a whole number of pixels >= {least} or null (a share of the "
                                 f"image diagonal), got {value!r}")
        for name in ("boundary_distance_ratio", "f1_tolerance_ratio"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
                raise ValueError(f"{key}.{name} must be a share of the image diagonal in (0, 1), got {value!r}")

    @classmethod
    def from_config(cls, value: bool | dict[str, Any] | None) -> BoundarySettings | None:
        """Settings from a config value: ``true`` (the defaults), ``false``/``null`` (off) or a mapping of fields."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"model.boundary_metrics must be true, false or a mapping of settings, got {value!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"model.boundary_metrics has no setting {unknown[0]!r}; use {', '.join(known)}")
        return cls(**{k: tuple(v) if k == "trimap_widths" and isinstance(v, list) else v for k, v in value.items()})

    def resolve_band(self, void_marks_boundaries: bool) -> Literal["void", "labels"]:
        """The trimap's seeds for data whose void does (or does not) mark object boundaries."""
        if self.trimap_band != "auto":
            return self.trimap_band
        return "void" if void_marks_boundaries else "labels"

    def boundary_distance_px(self, height: int, width: int) -> int:
        """Boundary IoU's ``d`` for an image of this size (Cheng et al.'s ``int(round(ratio * diagonal))``, >= 1)."""
        if self.boundary_distance is not None:
            return self.boundary_distance
        return max(1, int(round(self.boundary_distance_ratio * math.hypot(height, width))))

    def f1_tolerance_px(self, height: int, width: int) -> int:
        """The boundary F1's tolerance for an image of this size (rounded, >= 1 unless set in pixels)."""
        if self.f1_tolerance is not None:
            return self.f1_tolerance
        return max(1, int(round(self.f1_tolerance_ratio * math.hypot(height, width))))

    def describe(self) -> str:
        """The distances in words, e.g. ``"d = 2% of the diagonal, F1 tolerance 0.75% of the diagonal"``."""
        d = (f"{self.boundary_distance} px" if self.boundary_distance is not None
             else f"{100 * self.boundary_distance_ratio:g}% of the diagonal")
        t = (f"{self.f1_tolerance} px" if self.f1_tolerance is not None
             else f"{100 * self.f1_tolerance_ratio:g}% of the diagonal")
        return f"Boundary IoU d = {d}, F1 tolerance {t} (chessboard distance)"


def _along(x: torch.Tensor, radius: int, dim: int, op: Callable[..., torch.Tensor], fill: Any) -> torch.Tensor:
    """``op`` over the window [i - radius, i + radius] along ``dim``, clipped to the tensor. The tensor is padded
    with ``op``'s identity ``fill``; each step then combines the current result with itself shifted by ``±step``,
    widening the window from ``c`` to ``c + step`` (contiguous while ``step <= 2c + 1``), so a radius takes
    O(log radius) steps."""
    size = x.shape[dim]
    radius = min(radius, size - 1)  # a wider window holds nothing more
    if radius <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = size + 2 * radius
    padded = x.new_full(shape, fill)
    padded.narrow(dim, radius, size).copy_(x)
    x, size, covered = padded, shape[dim], 0
    while covered < radius:
        step = min(2 * covered + 1, radius - covered)
        out = x.clone()
        for a, b in ((step, 0), (0, step)):
            target = out.narrow(dim, a, size - step)
            op(target, x.narrow(dim, b, size - step), out=target)
        x, covered = out, covered + step
    return x.narrow(dim, radius, size - 2 * radius)


def _identity(x: torch.Tensor, op: Callable[..., torch.Tensor]) -> Any:
    if op is torch.bitwise_or:
        return 0 if x.dtype != torch.bool else False
    if x.dtype == torch.bool:
        return op is torch.minimum
    info = torch.iinfo(x.dtype) if not x.dtype.is_floating_point else torch.finfo(x.dtype)
    return info.min if op is torch.maximum else info.max


def square_window(x: torch.Tensor, radius: int, op: Callable[..., torch.Tensor]) -> torch.Tensor:
    """``op`` (``torch.maximum``, ``torch.minimum``, ``torch.bitwise_or``) over the (2 radius + 1)^2 square around
    each pixel of ``x`` [..., H, W] that lies inside the image (chessboard distance <= radius); same shape.
    With ``bitwise_or`` on a bool mask it is the morphological dilation by that square."""
    fill = _identity(x, op)
    return _along(_along(x, radius, x.ndim - 2, op, fill), radius, x.ndim - 1, op, fill)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels within chessboard distance ``radius`` of a pixel of ``mask`` [..., H, W] (bool), inside the image."""
    return square_window(mask, radius, torch.bitwise_or)


def label_edges(labels: torch.Tensor) -> torch.Tensor:
    """bool [H, W]: pixels whose label differs from one of their 4-neighbours' (inside the image)."""
    edges = torch.zeros_like(labels, dtype=torch.bool)
    vertical, horizontal = labels[1:] != labels[:-1], labels[:, 1:] != labels[:, :-1]
    edges[1:] |= vertical
    edges[:-1] |= vertical
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    return edges


def _codes(labels: torch.Tensor, valid: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels as compact codes [h, w]: 0 for void, ``c + 1`` for class c (uint8 up to 254 classes, else int16),
    so that the window maxima and minima move few bytes."""
    dtype = torch.uint8 if num_classes < 255 else torch.int16
    return ((labels + 1) * valid).to(dtype)


def _count(index: torch.Tensor, where: torch.Tensor, size: int) -> torch.Tensor:
    """[rows, size] int64: how often each value of ``index`` [h, w] occurs where each row of ``where``
    [rows, h, w] holds. No host synchronisation (``index_add_`` into a fixed size, not ``bincount``)."""
    index = index.flatten().int()
    counts = torch.zeros(where.shape[0], size, dtype=torch.int32, device=where.device)
    for row in range(where.shape[0]):  # index_add_ along dim 0: along dim 1 it is ~50x slower on CPU
        counts[row].index_add_(0, index, where[row].flatten().int())
    return counts.long()


_BITS = ((8, torch.uint8), (16, torch.int16), (32, torch.int32), (64, torch.int64))


class BoundaryMetrics(Metric):
    """Trimap confusion matrices [K, C, C], Boundary IoU counts [C] and boundary F1 counts [C] of a whole split
    (see the module docstring for the definitions), summed over images and, through torchmetrics, processes.

    ``update(pred, target)`` takes one image's predicted labels and target [h, w] on its own extent (the padding
    of its canvas cropped off) and runs on their device without a host synchronisation. ``trimap_band``
    (``void`` or ``labels``) must be set before the first update of a split when the settings say ``auto``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, ignore_index: int, settings: BoundarySettings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes > 32766:
            raise ValueError(f"BoundaryMetrics counts up to 32766 classes, got num_classes={num_classes}")
        self.num_classes, self.ignore_index, self.settings = num_classes, ignore_index, settings
        self.trimap_band: str | None = None if settings.trimap_band == "auto" else settings.trimap_band
        c, k = num_classes, len(settings.trimap_widths)
        self.add_state("trimap_confmat", default=torch.zeros(k, c, c, dtype=torch.long), dist_reduce_fx="sum")
        # rows: |G_d| (target), |P_d| (prediction), |G_d ∩ P_d| per class
        self.add_state("boundary_counts", default=torch.zeros(3, c, dtype=torch.long), dist_reduce_fx="sum")
        # rows: predicted contour pixels, those matched, target contour pixels, those matched, per class
        self.add_state("f1_counts", default=torch.zeros(4, c, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: labels [h, w] of one image."""
        if pred.shape != target.shape or pred.ndim != 2:
            raise ValueError(f"BoundaryMetrics.update takes one image's labels [h, w]: prediction "
                             f"{list(pred.shape)}, target {list(target.shape)}")
        if self.trimap_band is None:
            raise ValueError("BoundaryMetrics.trimap_band is unset: set 'void' or 'labels' before the split (the "
                             "module does it from model.boundary_metrics.trimap_band and the data module)")
        n = self.num_classes
        valid = (target != self.ignore_index) & (target >= 0) & (target < n)
        truth = _codes(target, valid, n)
        pred = _codes(pred, valid, n)  # void is in no class's mask on either side
        h, w = target.shape
        self._trimap(pred, truth, valid)
        distance, tolerance = self.settings.boundary_distance_px(h, w), self.settings.f1_tolerance_px(h, w)
        # The windows of radius 1 (contours) extended to radius d (boundary regions): square windows compose.
        contour_truth, near_truth = self._boundary_regions(truth, distance)
        contour_pred, near_pred = self._boundary_regions(pred, distance)
        in_truth, in_pred = valid & near_truth, valid & near_pred
        self.boundary_counts += torch.cat([_count(truth, in_truth[None], n + 1), _count(pred, in_pred[None], n + 1),
                                           _count(truth, (in_truth & in_pred & (truth == pred))[None], n + 1)])[:, 1:]
        self._f1(pred, truth, valid & contour_pred, valid & contour_truth, tolerance)

    @staticmethod
    def _boundary_regions(codes: torch.Tensor, distance: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixels with another label within 1, within ``distance``) of a label map [h, w]: for every class the
        part of its mask within that distance of the mask's contour (Cheng et al.'s G_d ∩ G), as the window's
        maximum differing from its minimum."""
        high, low = square_window(codes, 1, torch.maximum), square_window(codes, 1, torch.minimum)
        contour = high != low
        if distance > 1:
            high = square_window(high, distance - 1, torch.maximum)
            low = square_window(low, distance - 1, torch.minimum)
            return contour, high != low
        return contour, contour

    def _trimap(self, pred: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor) -> None:
        n, widths = self.num_classes, self.settings.trimap_widths
        band = ~valid if self.trimap_band == "void" else label_edges(truth)
        outside = torch.zeros_like(truth)  # how many of the bands a pixel is outside of: its first band's index
        previous = 0
        for width in widths:  # nested bands, each dilated from the last (chessboard distances add up)
            band = dilate(band, width - previous)
            outside += ~band
            previous = width
        k, m = len(widths), n + 1
        index = (outside.int() * m + truth) * m + pred
        counts = _count(index, (valid & (outside < k))[None], (k + 1) * m * m)[0]
        self.trimap_confmat += counts.view(k + 1, m, m)[:k, 1:, 1:].cumsum(0)

    def _f1(self, pred: torch.Tensor, truth: torch.Tensor, contour_pred: torch.Tensor, contour_truth: torch.Tensor,
            tolerance: int) -> None:
        """Contour pixels of each map, matched per class through bit planes: bit ``c % B`` of word ``c // B`` is
        set on class c's contour pixels (B = 8 ... 64 bits, the fewest that hold the classes), and one dilation
        by OR of a word serves B classes at once."""
        n = self.num_classes
        bits, dtype = next((b, t) for b, t in _BITS if n <= b or b == 64)
        words = (n + bits - 1) // bits
        matched_pred, matched_truth = torch.zeros_like(contour_pred), torch.zeros_like(contour_truth)
        for word in range(words):
            if words == 1:  # class c = code - 1 is its bit
                on_truth, on_pred = contour_truth, contour_pred
                shift_truth, shift_pred = ((codes.clamp_min(1) - 1).to(dtype) for codes in (truth, pred))
            else:
                c_truth, c_pred = truth.long() - 1, pred.long() - 1
                on_truth, on_pred = contour_truth & (c_truth // bits == word), contour_pred & (c_pred // bits == word)
                shift_truth, shift_pred = ((c.clamp_min(0) % bits).to(dtype) for c in (c_truth, c_pred))
            one = torch.ones_like(shift_truth)
            near_truth = dilate((one << shift_truth) * on_truth, tolerance)
            near_pred = dilate((one << shift_pred) * on_pred, tolerance)
            matched_pred |= on_pred & ((near_truth >> shift_pred) & 1).bool()
            matched_truth |= on_truth & ((near_pred >> shift_truth) & 1).bool()
        counts = torch.cat([_count(pred, torch.stack([contour_pred, matched_pred]), n + 1),
                            _count(truth, torch.stack([contour_truth, matched_truth]), n + 1)])
        self.f1_counts += counts[:, 1:]

    def compute(self) -> dict[str, torch.Tensor]:
        """``trimap_confmat`` [K, C, C], ``trimap_iou`` [K, C], ``trimap_mIoU`` [K], ``trimap_pixel_acc`` [K],
        ``boundary_iou`` [C] and ``boundary_mIoU``, ``boundary_precision``, ``boundary_recall``, ``boundary_f1``
        [C] and ``boundary_mF1``, plus the raw ``boundary_counts`` [3, C] and ``f1_counts`` [4, C]."""
        confmat = self.trimap_confmat.double()
        tp = confmat.diagonal(dim1=1, dim2=2)
        trimap_iou = tp / (confmat.sum(1) + confmat.sum(2) - tp)
        truth, pred, both = self.boundary_counts.double()
        boundary_iou = both / (truth + pred - both)
        pred_total, pred_matched, truth_total, truth_matched = self.f1_counts.double()
        precision, recall = pred_matched / pred_total, truth_matched / truth_total
        f1 = (2 * precision * recall / (precision + recall)).nan_to_num(0.0)  # no match at all: 0
        f1[(pred_total == 0) != (truth_total == 0)] = 0.0  # contours on one side only
        f1[(pred_total == 0) & (truth_total == 0)] = float("nan")  # the class has no contour: left out
        return {
            "trimap_confmat": self.trimap_confmat.clone(), "trimap_iou": trimap_iou.float(),
            "trimap_mIoU": trimap_iou.nanmean(1).float(),
            "trimap_pixel_acc": (tp.sum(1) / confmat.sum((1, 2))).float(),
            "boundary_iou": boundary_iou.float(), "boundary_mIoU": boundary_iou.nanmean().float(),
            "boundary_precision": precision.float(), "boundary_recall": recall.float(), "boundary_f1": f1.float(),
            "boundary_mF1": f1.nanmean().float(), "boundary_counts": self.boundary_counts.clone(),
            "f1_counts": self.f1_counts.clone(),
        }

@dataclass(frozen=True)
class BoundaryResults:
    """The boundary metrics of one whole split (fractions in [0, 1]; NaN where a class or band has nothing to
    score; see :mod:`deeplab_lightning.evaluation.boundaries` for the definitions).

    Attributes:
        trimap_band: the trimap's seeds that ran: ``void`` (void pixels) or ``labels`` (label boundaries).
        trimap_widths: the band widths in pixels, increasing (K of them).
        trimap_mIoU, trimap_pixel_acc: [K] per band width.
        trimap_iou: [K, C] per band width and class.
        trimap_confmat: [K, C, C] int64 confusion matrices of the bands (rows: target).
        boundary_iou: [C] Boundary IoU per class; boundary_mIoU their mean.
        boundary_precision, boundary_recall, boundary_f1: [C] per class; boundary_mF1 the mean F1.
        boundary_counts: [3, C] int64 |G_d|, |P_d|, |G_d ∩ P_d|; f1_counts: [4, C] int64 predicted contour
            pixels, matched ones, target contour pixels, matched ones.
        settings: the :class:`BoundarySettings` measured with.
    """

    trimap_band: str
    trimap_widths: tuple[int, ...]
    trimap_mIoU: torch.Tensor
    trimap_pixel_acc: torch.Tensor
    trimap_iou: torch.Tensor
    trimap_confmat: torch.Tensor
    boundary_iou: torch.Tensor
    boundary_mIoU: float
    boundary_precision: torch.Tensor
    boundary_recall: torch.Tensor
    boundary_f1: torch.Tensor
    boundary_mF1: float
    boundary_counts: torch.Tensor
    f1_counts: torch.Tensor
    settings: BoundarySettings

    @classmethod
    def from_values(cls, values: dict[str, torch.Tensor], band: str, settings: BoundarySettings) -> BoundaryResults:
        """From :meth:`BoundaryMetrics.compute`'s dict (copied to the host; the shapes torchmetrics squeezes when
        a dimension is 1 restored)."""
        k, c = len(settings.trimap_widths), values["f1_counts"].numel() // 4
        shapes = {"trimap_mIoU": (k,), "trimap_pixel_acc": (k,), "trimap_iou": (k, c), "trimap_confmat": (k, c, c),
                  "boundary_iou": (c,), "boundary_precision": (c,), "boundary_recall": (c,), "boundary_f1": (c,),
                  "boundary_counts": (3, c), "f1_counts": (4, c)}
        return cls(trimap_band=band, trimap_widths=settings.trimap_widths, settings=settings,
                   boundary_mIoU=float(values["boundary_mIoU"]), boundary_mF1=float(values["boundary_mF1"]),
                   **{key: values[key].cpu().reshape(shape) for key, shape in shapes.items()})

    def trimap_at(self, width: int) -> tuple[float, float]:
        """(mIoU, pixel accuracy) of the band of ``width`` pixels (one of :attr:`trimap_widths`)."""
        if width not in self.trimap_widths:
            raise ValueError(f"No trimap of width {width} px: measured {list(self.trimap_widths)} "
                             f"(model.boundary_metrics.trimap_widths)")
        k = self.trimap_widths.index(width)
        return float(self.trimap_mIoU[k]), float(self.trimap_pixel_acc[k])

    def describe_trimap(self) -> str:
        """Which trimap ran, in words: ``"labelled pixels within w px of void pixels"`` or of label boundaries."""
        return f"labelled pixels within w px (chessboard) of {TRIMAP_SEEDS[self.trimap_band]}"

    def logged(self, prefix: str, class_names: Sequence[str]) -> dict[str, float]:
        """Scalars to log by name: ``<prefix>/trimap_<band>/mIoU_<w>px`` and ``pixel_acc_<w>px`` (the band's seeds
        in the name), ``<prefix>/boundary_mIoU``, ``<prefix>/boundary_iou/<class>``, ``<prefix>/boundary_mF1``,
        ``<prefix>/boundary_f1/<class>``."""
        logged: dict[str, float] = {}
        for width, miou, acc in zip(self.trimap_widths, self.trimap_mIoU.tolist(), self.trimap_pixel_acc.tolist()):
            logged[f"{prefix}/trimap_{self.trimap_band}/mIoU_{width}px"] = miou
            logged[f"{prefix}/trimap_{self.trimap_band}/pixel_acc_{width}px"] = acc
        logged[f"{prefix}/boundary_mIoU"] = self.boundary_mIoU
        logged |= {f"{prefix}/boundary_iou/{name}": v for name, v in zip(class_names, self.boundary_iou.tolist())}
        logged[f"{prefix}/boundary_mF1"] = self.boundary_mF1
        logged |= {f"{prefix}/boundary_f1/{name}": v for name, v in zip(class_names, self.boundary_f1.tolist())}
        return logged
