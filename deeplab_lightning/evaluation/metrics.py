"""Segmentation metrics over a whole split, from one accumulated confusion matrix."""
from __future__ import annotations

import torch
from torchmetrics import Metric


class SegmentationMetrics(Metric):
    """Accumulates a ``num_classes x num_classes`` confusion matrix (rows: target, columns: prediction).

    Pixels labelled ``ignore_index`` are skipped. The matrix is summed across batches and, through
    torchmetrics, across processes; every score is computed once from the final matrix (never a mean of
    per-batch scores). ``update`` does no host-device synchronisation.

    ``compute()`` returns ``{"mIoU", "pixel_acc", "iou", "confmat"}``: IoU_c = TP / (TP + FP + FN) per class,
    mIoU their mean. A class absent from the split's targets but predicted somewhere has IoU 0 and counts in the
    mean. A class neither in the targets nor predicted has IoU 0/0 = NaN and is left out of the mean (NaN-mean),
    as cityscapesScripts (``getScoreAverage`` averages the non-NaN scores) and torchmetrics' macro
    ``JaccardIndex`` do. The PASCAL VOC devkit (``VOCevalseg.m``) computes the same per-class TP / (TP + FP + FN)
    but averages over every class with MATLAB's ``mean``, so such a class makes its mean NaN; on VOC 2012 val
    every class occurs, and the two agree.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds: predicted labels [N, H, W] (or logits [N, C, H, W]); target: labels [N, H, W]."""
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(f"prediction shape {list(preds.shape)} does not match target {list(target.shape)}")
        n = self.num_classes
        target = target.long()
        # ignore_index (and any label outside [0, n), which the data loaders reject) goes to a discarded bin,
        # never into another class's cell; ignore_index may also be a class index (a dataset whose void is 0).
        valid = (target != self.ignore_index) & (target >= 0) & (target < n)
        index = torch.where(valid, target * n + preds.long(), n * n).flatten()
        counts = torch.zeros(n * n + 1, dtype=torch.long, device=preds.device)
        counts.index_add_(0, index, torch.ones_like(index))
        self.confmat += counts[: n * n].view(n, n)

    def compute(self) -> dict[str, torch.Tensor]:
        confmat = self.confmat.double()
        tp = confmat.diag()
        union = confmat.sum(0) + confmat.sum(1) - tp
        iou = tp / union  # NaN where the class is absent from both target and prediction
        return {
            "mIoU": iou.nanmean().float(),
            "pixel_acc": (tp.sum() / confmat.sum()).float(),
            "iou": iou.float(),
            "confmat": self.confmat.clone(),
        }
