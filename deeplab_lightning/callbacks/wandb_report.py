"""Segmentation media for Weights & Biases: per-class IoU, confusion matrix, predicted masks."""
from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import WandbLogger

from ..evaluation.boundaries import TRIMAP_SEEDS
from ..evaluation.plots import confusion_matrix_figure


def _pad_to_common_size(samples: list[tuple[Any, ...]], ignore_index: int) -> list[tuple[Any, ...]]:
    """Pad (id, image [H,W,3], pred [H,W], mask [H,W]) to the largest H, W (black image, labels
    ``ignore_index``): wandb shows a list of images in one panel only when they share a size."""
    if not samples:
        return samples
    h = max(s[1].shape[0] for s in samples)
    w = max(s[1].shape[1] for s in samples)

    def pad(a: np.ndarray, fill: int) -> np.ndarray:
        widths = [(0, h - a.shape[0]), (0, w - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
        return np.pad(a, widths, constant_values=fill)

    return [(i, pad(image, 0), pad(pred, ignore_index), pad(mask, ignore_index)) for i, image, pred, mask in samples]


class WandbReport(L.Callback):
    """After each validation and test, sends to the wandb run (no-op without a ``WandbLogger``):

    - ``<stage>/iou_table``: a table of per-class IoU (and a bar chart of it), with the step of the weights, and
      each class's Boundary IoU and boundary F1 when the boundary metrics run;
    - ``<stage>/trimap_curve``: trimap mIoU against band width (V3+ Fig. 5a), one line per evaluation of the run
      (and one before the dense CRF when it runs), the band's seeds in the title; ``<stage>/trimap_table`` the
      same numbers with the pixel accuracy;
    - ``<stage>/confusion_matrix``: the row-normalised heatmap, and ``<stage>/confusion_counts`` the counts;
    - ``<stage>/predictions``: the first ``num_images`` images of the split with the predicted and the
      ground-truth masks as interactive overlays (the same images each time, to watch training progress).

    Scalars (loss, learning rate, mIoU, per-class IoU curves) are logged by the module and
    ``LearningRateMonitor``; the resolved config and run info by the command line.
    """

    def __init__(self, num_images: int = 4) -> None:
        self.num_images = num_images
        self.samples: list[tuple[Any, ...]] = []
        # per stage: (line name, band, widths, mIoU per width, pixel accuracy per width), one per evaluation
        self.trimap_lines: dict[str, list[tuple[str, str, tuple[int, ...], list[float], list[float]]]] = {}

    @staticmethod
    def _logger(trainer: L.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def _collect(self, trainer: L.Trainer, outputs: Any, batch: dict[str, Any]) -> None:
        if not trainer.is_global_zero or self._logger(trainer) is None or not isinstance(outputs, list):
            return
        for i, pred in enumerate(outputs):
            if len(self.samples) >= self.num_images:
                return
            h, w = pred.shape
            image = batch["image"][i, :, :h, :w].permute(1, 2, 0).cpu().numpy()
            self.samples.append((batch["id"][i], image, pred.cpu().numpy(), batch["mask"][i, :h, :w].cpu().numpy()))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.samples = []

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, outputs, batch)

    on_test_batch_end = on_validation_batch_end

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._send(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._send(trainer, pl_module, "test")

    def _send(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logger = self._logger(trainer)
        results = pl_module.evaluation_results(stage)
        if logger is None or results is None or not trainer.is_global_zero:
            return
        import wandb

        names = list(pl_module.class_names)
        ignore = pl_module.hparams.ignore_index
        labels = dict(enumerate(names)) | {ignore: "ignore"}
        step = results.step  # the step of the weights measured (a tested checkpoint's, not 0)
        split, stage = stage, pl_module.metric_prefix(stage)  # test_on_val for a test of the validation split
        boundary = results.boundary
        if boundary is None:
            iou = wandb.Table(columns=["step", "class", "IoU"],
                              data=[[step, n, float(v)] for n, v in zip(names, results.iou)])
        else:
            iou = wandb.Table(columns=["step", "class", "IoU", "boundary IoU", "boundary F1"],
                              data=[[step, n, float(v), float(b), float(f)] for n, v, b, f in zip(
                                  names, results.iou, boundary.boundary_iou, boundary.boundary_f1)])
        confmat = results.confmat
        figure = confusion_matrix_figure(confmat, names, f"{stage} confusion matrix (step {step})")
        counts = wandb.Table(columns=["step", "truth", *names],
                             data=[[step, n, *row] for n, row in zip(names, confmat.tolist())])
        media = {
            f"{stage}/iou_table": iou,
            f"{stage}/iou_bars": wandb.plot.bar(iou, "class", "IoU", title=f"{stage} per-class IoU (step {step})"),
            f"{stage}/confusion_matrix": wandb.Image(figure),
            f"{stage}/confusion_counts": counts,
            f"{stage}/predictions": [
                wandb.Image(image, caption=f"{sample_id} (step {step})", masks={
                    "prediction": {"mask_data": pred, "class_labels": labels},
                    "ground_truth": {"mask_data": mask, "class_labels": labels}})
                for sample_id, image, pred, mask in _pad_to_common_size(self.samples, ignore)],
        }
        trimap = self._trimap_media(pl_module, split, stage, step)
        logger.experiment.log(media | trimap | {"trainer/global_step": step})
        self.samples = []

    def _trimap_media(self, pl_module: L.LightningModule, split: str, stage: str, step: int) -> dict[str, Any]:
        """The trimap curve of every evaluation of ``split`` in this run so far, this one's added, under the
        ``stage`` prefix (none without the boundary metrics)."""
        import wandb

        results = pl_module.evaluation_results(split)
        before = pl_module.evaluation_results(split, unrefined=True)
        if results is None or results.boundary is None:
            return {}
        lines = self.trimap_lines.setdefault(stage, [])
        crf = before is not None and before.boundary is not None
        for name, measured in ((f"step {step}", before), (f"step {step} + CRF", results)) if crf else (
                (f"step {step}", results),):
            b = measured.boundary
            lines.append((name, b.trimap_band, b.trimap_widths, b.trimap_mIoU.tolist(), b.trimap_pixel_acc.tolist()))
        band, widths = lines[-1][1], lines[-1][2]
        same = [line for line in lines if line[1:3] == (band, widths)]  # a chart has one x axis and one band
        table = wandb.Table(columns=["evaluation", "band", "width (px)", "mIoU", "pixel acc."], data=[
            [name, b, w, m, a] for name, b, ws, ms, accs in lines for w, m, a in zip(ws, ms, accs)])
        title = f"{stage} trimap mIoU vs band width (around {TRIMAP_SEEDS[band]})"
        curve = wandb.plot.line_series(xs=list(widths), ys=[line[3] for line in same],
                                       keys=[line[0] for line in same], title=title, xname="band width (px)")
        return {f"{stage}/trimap_curve": curve, f"{stage}/trimap_table": table}
