"""The evaluator: the metrics of validation and test, accumulated over a whole split, and their last results."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .boundaries import BoundaryMetrics, BoundaryResults, BoundarySettings
from .metrics import SegmentationMetrics
from .pipeline import BatchScores

STAGES = ("val", "test")


@dataclass(frozen=True)
class EvaluationResults:
    """Metrics of one whole split: mIoU and pixel accuracy in [0, 1], per-class IoU [C] (NaN for a class absent
    from targets and predictions), the confusion matrix [C, C] (rows: target), the global step of the
    weights evaluated, and the boundary metrics (trimap, Boundary IoU, boundary F1; None when
    ``model.boundary_metrics`` is off)."""

    mIoU: float
    pixel_acc: float
    iou: torch.Tensor
    confmat: torch.Tensor
    step: int = 0
    boundary: BoundaryResults | None = None


class Evaluator(nn.Module):
    """One confusion matrix per stage (``val``, ``test``) for the final scores and one for the scores before the
    dense CRF, with their boundary metrics (:mod:`.boundaries`, unless ``boundary`` is None), all summed over
    the whole split and all processes (never a mean of per-batch scores), and the results of the last whole
    split of each."""

    def __init__(self, num_classes: int, ignore_index: int, class_names: Sequence[str],
                 boundary: BoundarySettings | None = None) -> None:
        super().__init__()
        self.class_names = list(class_names)
        self.boundary = boundary
        self.final = nn.ModuleDict({s: SegmentationMetrics(num_classes, ignore_index) for s in STAGES})
        self.unrefined = nn.ModuleDict({s: SegmentationMetrics(num_classes, ignore_index) for s in STAGES})
        if boundary is not None:
            self.final_boundary = nn.ModuleDict(
                {s: BoundaryMetrics(num_classes, ignore_index, boundary) for s in STAGES})
            self.unrefined_boundary = nn.ModuleDict(
                {s: BoundaryMetrics(num_classes, ignore_index, boundary) for s in STAGES})
        self._results: dict[tuple[str, bool], EvaluationResults] = {}

    def begin(self, stage: str, void_marks_boundaries: bool) -> None:
        """Start a split: its trimap's seeds from the settings, ``auto`` resolved by whether the data's void
        marks object boundaries (the data module's ``void_marks_boundaries``: VOC and the toy data)."""
        if self.boundary is not None:
            band = self.boundary.resolve_band(void_marks_boundaries)
            self.final_boundary[stage].trimap_band = self.unrefined_boundary[stage].trimap_band = band

    def update(self, stage: str, scores: BatchScores, targets: Sequence[torch.Tensor]) -> None:
        """Count one batch: ``scores`` of each image and its labels [h_i, w_i] (each image's own extent). A split
        counted without :meth:`begin` (steps called outside a trainer's loop: no data module to ask) takes label
        boundaries as the trimap's seeds, unless the settings say ``void``."""
        if self.boundary is not None and self.final_boundary[stage].trimap_band is None:
            self.begin(stage, void_marks_boundaries=False)
        pairs = [(self.final, "final_boundary", scores.labels)]
        if scores.unrefined is not None:
            pairs.append((self.unrefined, "unrefined_boundary", scores.unrefined_labels))
        for metrics, boundary, labels in pairs:
            for pred, target in zip(labels, targets):
                metrics[stage].update(pred[None], target[None])
                if self.boundary is not None:
                    getattr(self, boundary)[stage].update(pred, target)

    def finish(self, stage: str, step: int, refined: bool, record: bool = True) -> dict[str, torch.Tensor]:
        """End the split: compute (across processes) and reset its metrics; with ``record`` keep its results
        (``refined``: also those before the CRF) and return the scalars to log by name (``val/mIoU``,
        ``val/pixel_acc``, ``val/iou/<class>``, and ``val/unrefined/...``)."""
        logged = self._finish(stage, False, step, record)
        if refined:
            logged |= self._finish(stage, True, step, record)
        else:  # an earlier evaluation's numbers before refinement are not this one's
            self._results.pop((stage, True), None)
        return logged

    def _finish(self, stage: str, unrefined: bool, step: int, record: bool) -> dict[str, torch.Tensor | float]:
        metrics = (self.unrefined if unrefined else self.final)[stage]
        values = metrics.compute()
        metrics.reset()
        boundary = None
        if self.boundary is not None:
            counts = (self.unrefined_boundary if unrefined else self.final_boundary)[stage]
            band = counts.trimap_band
            boundary = BoundaryResults.from_values(counts.compute(), band, self.boundary) if record else None
            counts.reset()
        if not record:
            return {}
        if int(values["confmat"].sum()) == 0:
            raise ValueError(f"The {stage} split has no labelled pixel: every label is the ignore index "
                             f"{metrics.ignore_index}, so its mIoU is undefined. Check its label files "
                             f"(deeplab-lightning check-data --config ... shows the class shares) or the data "
                             f"module's ignore_index and label map")
        prefix = f"{stage}/unrefined" if unrefined else stage
        self._results[(stage, unrefined)] = EvaluationResults(
            mIoU=float(values["mIoU"]), pixel_acc=float(values["pixel_acc"]), iou=values["iou"].cpu(),
            confmat=values["confmat"].cpu(), step=step, boundary=boundary)
        logged = {f"{prefix}/mIoU": values["mIoU"], f"{prefix}/pixel_acc": values["pixel_acc"]}
        logged |= {f"{prefix}/iou/{name}": iou for name, iou in zip(self.class_names, values["iou"])}
        return logged | (boundary.logged(prefix, self.class_names) if boundary is not None else {})

    def results(self, stage: str = "val", unrefined: bool = False) -> EvaluationResults | None:
        """The metrics of the last whole ``stage`` (``val`` or ``test``); ``unrefined``: before the dense CRF."""
        if stage not in STAGES:
            raise ValueError(f"No evaluation stage {stage!r}: use one of {STAGES} (before the dense CRF: "
                             f"unrefined=True)")
        return self._results.get((stage, unrefined))
