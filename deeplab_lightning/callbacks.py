"""Lightning callbacks. They stay thin: the maths lives in plain functions that tests call directly."""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image
from rich.console import Console
from rich.table import Table

from .data.classes import flat_palette, voc_palette
from .evaluation import CRFSettings, EvaluationResults, Inference
from .wandb_report import WandbReport  # noqa: F401  (so configs can name deeplab_lightning.callbacks.WandbReport)


def poly_lr_factor(step: int, max_steps: int, power: float = 0.9, warmup_steps: int = 0,
                   warmup_start_factor: float = 0.0) -> float:
    """Multiplier of the base learning rate before optimizer step ``step`` (0-based).

    Poly schedule (DeepLab V2 section 4.1): ``(1 - step / max_steps) ** power``. With ``warmup_steps > 0`` the
    first steps ramp linearly from ``warmup_start_factor`` to the poly value:
    ``factor * (s + (1 - s) * step / warmup_steps)`` with ``s = warmup_start_factor``.
    """
    if max_steps <= 0:
        raise ValueError(f"PolyLR needs a positive number of steps, got max_steps={max_steps}")
    factor = (1.0 - min(step, max_steps) / max_steps) ** power
    if step < warmup_steps:
        factor *= warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps
    return factor


class PolyLR(L.Callback):
    """Sets every parameter group's lr to ``initial_lr * poly_lr_factor(global_step, ...)`` before each
    optimizer step, so groups keep their multipliers (head x10) and the schedule is exact after a resume.

    Args:
        power: 0.9 in every DeepLab paper.
        max_steps: schedule length; ``None`` takes ``trainer.max_steps``, else the estimated number of steps.
        warmup_steps, warmup_start_factor: optional linear warmup (not in the papers; off by default).
    """

    def __init__(self, power: float = 0.9, max_steps: int | None = None, warmup_steps: int = 0,
                 warmup_start_factor: float = 0.0) -> None:
        self.power = power
        self.max_steps = max_steps
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor

    def _total_steps(self, trainer: L.Trainer) -> int:
        if self.max_steps is not None:
            return self.max_steps
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        return int(trainer.estimated_stepping_batches)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        factor = poly_lr_factor(trainer.global_step, self._total_steps(trainer), self.power, self.warmup_steps,
                                self.warmup_start_factor)
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar without a host sync after every training step.

    Metrics logged with ``prog_bar=True`` are copied to the host by Lightning after every step, which makes the
    CPU wait for the GPU instead of queueing the next batch. This bar instead shows the logged metrics named in
    ``show`` (default: the training loss), read at most every ``metrics_every_s`` seconds. Step-based runs
    (``max_epochs: -1``) show ``Epoch N``, not ``Epoch N/-2``. Other arguments are ``RichProgressBar``'s.
    """

    def __init__(self, metrics_every_s: float = 1.0, show: Sequence[str] = ("train/loss",), **kwargs) -> None:
        super().__init__(**kwargs)
        self.metrics_every_s = metrics_every_s
        self.show = tuple(show)
        self._metrics_read_at = -float("inf")
        self._skip_metrics = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        self._skip_metrics = now - self._metrics_read_at < self.metrics_every_s
        if not self._skip_metrics:
            self._metrics_read_at = now
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self._skip_metrics = False

    def _update_metrics(self, trainer, pl_module) -> None:
        if not self._skip_metrics:
            super()._update_metrics(trainer, pl_module)

    def get_metrics(self, trainer, pl_module) -> dict[str, int | str | float | dict[str, float]]:
        items = super().get_metrics(trainer, pl_module)
        logged = trainer.callback_metrics
        for name in self.show:
            if name in logged:
                value = logged[name]
                items[name] = value.item() if isinstance(value, torch.Tensor) else value
        return items

    def _get_train_description(self, current_epoch: int) -> str:
        description = super()._get_train_description(current_epoch)
        if self.trainer.max_epochs is not None and self.trainer.max_epochs < 0:
            description = description.replace(f"/{self.trainer.max_epochs - 1}", "", 1)
        return description


def iou_table(class_names: Sequence[str], results: EvaluationResults, title: str) -> Table:
    """A rich table of per-class IoU with the mIoU and pixel accuracy in the footer."""
    table = Table(title=title, show_footer=True)
    table.add_column("class", footer="mean IoU / pixel acc.")
    table.add_column("IoU (%)", justify="right",
                     footer=f"{100 * results.mIoU:.2f} / {100 * results.pixel_acc:.2f}")
    for name, iou in zip(class_names, results.iou.tolist()):
        table.add_row(name, "n/a" if iou != iou else f"{100 * iou:.2f}")
    return table


class Throughput(L.Callback):
    """Measures training images per second over all processes, after ``warmup_steps`` and without the time
    spent in validation; logs ``train/img_per_s`` at each validation and at the end, and keeps ``img_per_s``.

    The clock is read (and the GPU synchronised) only at the window's ends and around validations, never
    inside a training step.
    """

    def __init__(self, warmup_steps: int = 5) -> None:
        self.warmup_steps = warmup_steps
        self.img_per_s: float | None = None
        self._images, self._seconds, self._since = 0, 0.0, None

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup_steps and self._since is None and self._images == 0:
            self._since = self._now(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._since is not None:
            self._images += batch["image"].shape[0] * trainer.world_size

    def _pause(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._since is None:
            return
        self._seconds += self._now(pl_module) - self._since
        self._since = None
        if self._seconds > 0:
            self.img_per_s = self._images / self._seconds
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics({"train/img_per_s": self.img_per_s}, step=trainer.global_step)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._pause(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and self._images > 0:
            self._since = self._now(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._pause(trainer, pl_module)


class IoUTable(L.Callback):
    """Prints the per-class IoU table of the last validation after ``fit`` and of the test after ``test``."""

    @rank_zero_only
    def _print(self, pl_module: L.LightningModule, stage: str, title: str) -> None:
        results = pl_module.evaluation_results(stage)
        if results is not None:
            Console().print(iou_table(pl_module.class_names, results, title))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(pl_module, "val", f"Validation after {trainer.global_step} steps")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._print(pl_module, "val", "Validation")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(pl_module, "test/unrefined", "Test, before refinement")
        self._print(pl_module, "test", "Test")


def _check_stages(owner: str, stages: Sequence[str]) -> None:
    unknown = set(stages) - {"fit", "validate", "test", "predict"}
    if unknown:
        raise ValueError(f"{owner} stages {sorted(unknown)} unknown; use fit, validate, test, predict")


class _ConfigureInference(L.Callback):
    """Applies ``changes`` to the module's :class:`~deeplab_lightning.evaluation.Inference` for ``stages``
    and restores the settings it changed after each."""

    def __init__(self, stages: Sequence[str], **changes) -> None:
        unknown = set(stages) - {"fit", "validate", "test", "predict"}
        if unknown:
            raise ValueError(f"{type(self).__name__} stages {sorted(unknown)} unknown; use fit, validate, test, "
                             f"predict")
        self.stages, self.changes = tuple(stages), changes
        self._previous: Inference | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage in self.stages:
            self._previous = pl_module.configure_inference(**self.changes)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is not None:  # undo only this callback's changes: others may have changed the rest
            pl_module.configure_inference(**{key: getattr(self._previous, key) for key in self.changes})
            self._previous = None


class MultiScaleInference(_ConfigureInference):
    """Switches evaluation to multi-scale (+ flip, + sliding window) inference for the chosen stages.

    Args:
        scales: input scales (V3 section 4.3: 0.5 to 1.75 in steps of 0.25).
        flip: also average the left-right flipped inputs.
        window: sliding-window size for large images (None: whole images).
        overlap: fraction by which neighbouring windows overlap.
        stages: trainer stages it applies to: any of ``fit`` (validation during training), ``validate``,
            ``test`` and ``predict``.
    """

    def __init__(self, scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip: bool = True,
                 window: int | None = None, overlap: float = 1 / 3,
                 stages: Sequence[str] = ("validate", "test", "predict")) -> None:
        super().__init__(stages, scales=scales, flip=flip, window=window, overlap=overlap)


class DenseCRFRefinement(_ConfigureInference):
    """Refines evaluation and prediction outputs with :func:`~deeplab_lightning.crf.dense_crf` and the
    un-normalised image (DeepLab V1 section 3.2, V2 section 3.4). Metrics before refinement are logged under
    ``<stage>/unrefined/``. Defaults: DeepLab V2's ResNet-101 VOC parameters.
    """

    def __init__(self, iterations: int = 10, bi_w: float = 4.0, bi_xy_std: float = 67.0, bi_rgb_std: float = 3.0,
                 pos_w: float = 3.0, pos_xy_std: float = 1.0, stages: Sequence[str] = ("test", "predict")) -> None:
        super().__init__(stages, crf=CRFSettings(iterations, bi_w, bi_xy_std, bi_rgb_std, pos_w, pos_xy_std))


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Side by side: the image [H,W,3] uint8 and the image blended with the coloured labels -> [H, 2W, 3]."""
    colours = palette[labels]
    blended = (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).astype(np.uint8)
    return np.concatenate([image, blended], axis=1)


class SegmentationWriter(BasePredictionWriter):
    """Writes each prediction of ``predict`` as ``<output_dir>/<id>.png`` (a palette PNG of class indices, in
    the data module's palette) and ``<output_dir>/overlays/<id>.jpg`` (image | coloured overlay)."""

    def __init__(self, output_dir: str = "predictions", overlays: bool = True, alpha: float = 0.5) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.overlays = overlays
        self.alpha = alpha

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: list[torch.Tensor],
                           batch_indices, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        flat = flat_palette(list(getattr(trainer.datamodule, "palette", None) or voc_palette()))
        palette = np.asarray(flat, np.uint8).reshape(256, 3)
        (self.output_dir / "overlays").mkdir(parents=True, exist_ok=True)
        for sample_id, labels, raw in zip(batch["id"], prediction, batch["image"]):
            labels = labels.cpu().numpy().astype(np.uint8)
            png = Image.fromarray(labels, mode="L").convert("P")
            png.putpalette(flat)
            png.save(self.output_dir / f"{sample_id}.png")
            if self.overlays:
                h, w = labels.shape
                image = raw[:, :h, :w].permute(1, 2, 0).cpu().numpy()
                Image.fromarray(overlay(image, labels, palette, self.alpha)).save(
                    self.output_dir / "overlays" / f"{sample_id}.jpg", quality=90)
