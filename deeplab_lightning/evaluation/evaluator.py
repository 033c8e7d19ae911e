"""The evaluator: the metrics of validation and test, accumulated over a whole split, and their last results."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .metrics import SegmentationMetrics
from .pipeline import BatchScores

STAGES = ("val", "test")


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


class Evaluator(nn.Module):
    """One confusion matrix per stage (``val``, ``test``) for the final scores and one for the scores before the
    dense CRF, summed over the whole split and all processes (never a mean of per-batch scores), and the
    results of the last whole split of each."""

    def __init__(self, num_classes: int, ignore_index: int, class_names: Sequence[str]) -> None:
        super().__init__()
        self.class_names = list(class_names)
        self.final = nn.ModuleDict({s: SegmentationMetrics(num_classes, ignore_index) for s in STAGES})
        self.unrefined = nn.ModuleDict({s: SegmentationMetrics(num_classes, ignore_index) for s in STAGES})
        self._results: dict[tuple[str, bool], EvaluationResults] = {}

    def update(self, stage: str, scores: BatchScores, targets: Sequence[torch.Tensor]) -> None:
        """Count one batch: ``scores`` of each image and its labels [h_i, w_i]."""
        pairs = [(self.final[stage], scores.labels)]
        if scores.unrefined is not None:
            pairs.append((self.unrefined[stage], [s.argmax(0) for s in scores.unrefined]))
        for metrics, labels in pairs:
            for pred, target in zip(labels, targets):
                metrics.update(pred[None], target[None])

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

    def _finish(self, stage: str, unrefined: bool, step: int, record: bool) -> dict[str, torch.Tensor]:
        metrics = (self.unrefined if unrefined else self.final)[stage]
        values = metrics.compute()
        metrics.reset()
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
            confmat=values["confmat"].cpu(), step=step)
        logged = {f"{prefix}/mIoU": values["mIoU"], f"{prefix}/pixel_acc": values["pixel_acc"]}
        return logged | {f"{prefix}/iou/{name}": iou for name, iou in zip(self.class_names, values["iou"])}

    def results(self, stage: str = "val", unrefined: bool = False) -> EvaluationResults | None:
        """The metrics of the last whole ``stage`` (``val`` or ``test``); ``unrefined``: before the dense CRF."""
        if stage not in STAGES:
            raise ValueError(f"No evaluation stage {stage!r}: use one of {STAGES} (before the dense CRF: "
                             f"unrefined=True)")
        return self._results.get((stage, unrefined))
