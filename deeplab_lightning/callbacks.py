"""Lightning callbacks. They stay thin: the maths lives in plain functions that tests call directly."""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import Image, ImageDraw, ImageFont
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


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar that follows a step-based run, works in log files, and never makes a
    training step wait for the GPU.

    - Step-based runs (``max_steps``) show one bar of global steps out of ``max_steps`` with elapsed time and
      ETA across epochs and validations (not one bar per epoch, nor ``Epoch N/-2``).
    - When the console is not a terminal (``| tee log``, a SLURM job's output) the live bar would print
      nothing; it then prints a plain line at the first step and every ``line_every_s`` seconds (step,
      loss, learning rate, images/s, elapsed, ETA), and one per evaluation every ``line_every_s``.
    - Metrics logged with ``prog_bar=True`` are copied to the host by Lightning after every step, which makes
      the CPU wait for the GPU instead of queueing the next batch. This bar instead shows the logged metrics
      named in ``show`` (default: the training loss), read at most every ``metrics_every_s`` seconds.

    Other arguments are ``RichProgressBar``'s.
    """

    def __init__(self, metrics_every_s: float = 1.0, show: Sequence[str] = ("train/loss",),
                 line_every_s: float = 30.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.metrics_every_s = metrics_every_s
        self.show = tuple(show)
        self.line_every_s = line_every_s
        self._metrics_read_at = -float("inf")
        self._skip_metrics = False
        self.plain: Console | None = None  # the console plain lines go to, when it is not a terminal
        self._line_at: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self._images = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        console = Console(**(self._console_kwargs or {}))
        if not console.is_terminal and self.is_enabled:
            self.plain = console
            self.disable()

    @staticmethod
    def _step_based(trainer: L.Trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._step_based(self.trainer) else super().total_train_batches

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not self._step_based(trainer) or self.is_disabled or self.train_progress_bar_id is None:
            super().on_train_epoch_start(trainer, pl_module)
            if self._step_based(trainer):
                self._update(self.train_progress_bar_id, trainer.global_step)
        elif self.progress is not None:
            self.progress.update(self.train_progress_bar_id,
                                 description=self._get_train_description(trainer.current_epoch))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        self._skip_metrics = now - self._metrics_read_at < self.metrics_every_s
        if not self._skip_metrics:
            self._metrics_read_at = now
        try:  # step-based: the bar counts global steps, not the epoch's batches
            position = trainer.global_step - 1 if self._step_based(trainer) else batch_idx
            super().on_train_batch_end(trainer, pl_module, outputs, batch, position)
        finally:
            self._skip_metrics = False
        self._images += len(batch["image"]) * trainer.world_size if isinstance(batch, dict) else 0
        last = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        if self.plain is not None and (self._due("train", now) or last):
            self._train_line(trainer, now)

    def _due(self, stage: str, now: float) -> bool:
        return now - self._line_at.get(stage, -float("inf")) >= self.line_every_s

    def _train_line(self, trainer: L.Trainer, now: float) -> None:
        previous = self._line_at.get("train", self._started["train"])
        self._line_at["train"] = now
        step, total = trainer.global_step, self.total_train_batches
        parts = [f"step {step}/{total}" if total != float("inf") else f"step {step}"]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}")
        if now > previous and self._images:
            parts.append(f"{self._images / (now - previous):.1f} img/s")
        self._images = 0
        elapsed = now - self._started["train"]
        parts.append(f"elapsed {_clock(elapsed)}")
        done = step - self._first_step
        if total != float("inf") and done > 0:
            parts.append(f"ETA {_clock(elapsed / done * (total - step))}")
        self.plain.print(" | ".join(parts), markup=False, highlight=False, soft_wrap=True)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._first_step = trainer.global_step  # a resumed run's ETA counts only the steps it ran
        self._started["train"] = time.monotonic()

    def _eval_line(self, trainer: L.Trainer, stage: str, batch_idx: int, dataloader_idx: int) -> None:
        if self.plain is None or trainer.sanity_checking:
            return
        now = time.monotonic()
        totals = {"validation": trainer.num_val_batches, "test": trainer.num_test_batches,
                  "predict": trainer.num_predict_batches}[stage]
        total = totals[dataloader_idx] if isinstance(totals, list) else totals
        if batch_idx == 0:
            self._started[stage] = now
            self._line_at.pop(stage, None)
        if self._due(stage, now) or batch_idx + 1 == total:
            self._line_at[stage] = now
            elapsed = now - self._started[stage]
            eta = "" if total == float("inf") else (
                f" | ETA {_clock(elapsed / (batch_idx + 1) * (total - batch_idx - 1))}")
            self.plain.print(f"{stage} batch {batch_idx + 1}/{total} | elapsed {_clock(elapsed)}{eta}",
                             markup=False, highlight=False, soft_wrap=True)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._eval_line(trainer, "validation", batch_idx, dataloader_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        results = getattr(pl_module, "evaluation_results", lambda stage: None)("val")
        if self.plain is not None and trainer.state.fn == "fit" and results is not None and not trainer.sanity_checking:
            self.plain.print(f"validation at step {results.step}: val/mIoU {results.mIoU:.4f}, pixel accuracy "
                             f"{results.pixel_acc:.4f}", markup=False, highlight=False, soft_wrap=True)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._eval_line(trainer, "test", batch_idx, dataloader_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._eval_line(trainer, "predict", batch_idx, dataloader_idx)

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


class PreemptionCheckpoint(L.Callback):
    """When SIGTERM stops a fit (pre-emption, ``scancel``, a scheduler's time limit, ``kill``), saves a
    resumable ``last.ckpt`` in the checkpoint folder before the process ends (the ``deeplab-lightning``
    command then exits with status 143, not 0). Lightning stops at the end of the current step; the checkpoint
    is that step's, written atomically. Under SLURM, Lightning's own requeue (``--signal=SIGUSR1@120``, see
    ``scripts/slurm_fit.sbatch``) saves ``hpc_ckpt_N.ckpt`` and resumes from it. The command adds this callback
    to every fit."""

    @staticmethod
    def checkpoint_path(trainer: L.Trainer) -> Path:
        checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.dirpath), None)
        return Path(checkpoint.dirpath if checkpoint is not None else trainer.default_root_dir) / "last.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit" or not (isinstance(exception, SIGTERMException) or trainer.received_sigterm):
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        rank_zero_info(f"Stopped by SIGTERM after step {trainer.global_step}; saved {path}. Resume with the same "
                       f"command and --ckpt_path {path}")


def iou_table(class_names: Sequence[str], results: EvaluationResults, title: str) -> Table:
    """A rich table of per-class IoU with the mIoU and pixel accuracy in the footer."""
    table = Table(title=title, show_footer=True, min_width=len(title))  # the title on one line
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


class NetworkSummary(L.Callback):
    """One line at the start of a fit: the network, its output stride and its parameter count (instead of
    Lightning's table, which lists the metric modules and ``Total FLOPs: 0``). The command adds it."""

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = getattr(pl_module, "net", pl_module)
        total = sum(p.numel() for p in net.parameters())
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        arch = pl_module.hparams.get("arch", type(net).__name__)
        stride = getattr(net, "output_stride", None)
        Console().print(f"{arch} ({type(net).__name__}{f', output stride {stride}' if stride else ''}): "
                        f"{total / 1e6:.1f} M parameters ({trainable / 1e6:.1f} M trainable)", highlight=False,
                        soft_wrap=True)


class FinalValidation(L.Callback):
    """Ends every step-based fit with a validation of its final weights, whatever ``max_steps`` and
    ``val_check_interval``: the last step asks Lightning to stop, which validates (and so checkpoints, e.g.
    ``best.ckpt``) unless that step was validated anyway. The command adds it to every fit."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class IoUTable(L.Callback):
    """Prints the per-class IoU table of the last validation after ``fit`` (titled with the step of the
    weights it measured) and of the test after ``test``."""

    @rank_zero_only
    def _print(self, pl_module: L.LightningModule, stage: str, title: str) -> None:
        results = pl_module.evaluation_results(stage)
        if results is not None:
            Console().print(iou_table(pl_module.class_names, results, title.format(step=results.step)))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(pl_module, "val", "Validation of the weights after step {step}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._print(pl_module, "val", "Validation of the checkpoint of step {step}")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(pl_module, "test/unrefined", "Test of the checkpoint of step {step}, before refinement")
        self._print(pl_module, "test", "Test of the checkpoint of step {step}")


def _check_stages(owner: str, stages: Sequence[str]) -> None:
    unknown = set(stages) - {"fit", "validate", "test", "predict"}
    if unknown:
        raise ValueError(f"{owner} stages {sorted(unknown)} unknown; use fit, validate, test, predict")


class _ConfigureInference(L.Callback):
    """Applies ``changes`` to the module's :class:`~deeplab_lightning.evaluation.Inference` for ``stages``
    and restores the settings it changed after each."""

    def __init__(self, stages: Sequence[str], **changes) -> None:
        _check_stages(type(self).__name__, stages)
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


def legend(labels: np.ndarray, names: Sequence[str], palette: np.ndarray, width: int) -> np.ndarray:
    """A strip [h, width, 3] naming the classes present in ``labels``, each beside a swatch of its colour."""
    present = [int(c) for c in np.unique(labels) if c < len(names)]
    row, swatch = 14, 10
    font = ImageFont.load_default()
    entries = [(palette[c], names[c]) for c in present]
    widths = [swatch + 4 + int(font.getlength(name)) + 12 for _, name in entries]
    lines, x = [[]], 0
    for entry, w in zip(entries, widths):
        if x + w > width and lines[-1]:
            lines.append([])
            x = 0
        lines[-1].append((entry, x))
        x += w
    strip = Image.new("RGB", (width, row * len(lines) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        y = 2 + i * row
        for (colour, name), x in line:
            draw.rectangle([x + 2, y + 1, x + 2 + swatch, y + 1 + swatch], fill=tuple(int(v) for v in colour),
                           outline=(0, 0, 0))
            draw.text((x + swatch + 6, y), name, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            names: Sequence[str] | None = None) -> np.ndarray:
    """Side by side: the image [H,W,3] uint8 and the image blended with the coloured labels -> [H, 2W, 3];
    with ``names``, a legend of the classes present below -> [H + legend, 2W, 3]."""
    colours = palette[labels]
    blended = (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).astype(np.uint8)
    pair = np.concatenate([image, blended], axis=1)
    if names is None:
        return pair
    return np.concatenate([pair, legend(labels, names, palette, pair.shape[1])], axis=0)


class SegmentationWriter(BasePredictionWriter):
    """Writes each prediction of ``predict`` as ``<output_dir>/<id>.png`` (a palette PNG of class indices, in
    the data module's palette) and ``<output_dir>/overlays/<id>.jpg`` (image | coloured overlay, with a legend of
    the classes present).

    Nothing is overwritten: before the first image it refuses (naming the files) an ``output_dir`` that holds an
    input image or label file, two images that would write the same file, and files already there from an
    earlier prediction unless ``overwrite`` is set.
    """

    def __init__(self, output_dir: str = "predictions", overlays: bool = True, alpha: float = 0.5,
                 overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.overlays = overlays
        self.alpha = alpha
        self.overwrite = overwrite

    def outputs(self, sample_id: str) -> list[Path]:
        """The files written for one image."""
        paths = [self.output_dir / f"{sample_id}.png"]
        return paths + [self.output_dir / "overlays" / f"{sample_id}.jpg"] if self.overlays else paths

    def check_outputs(self, samples: Sequence) -> None:
        """Raise, before anything is written, if writing ``samples`` (with ``id``, ``image``, ``mask``) would
        replace an input, another prediction of this run, or (without ``overwrite``) an earlier one."""
        inputs = {Path(p).resolve() for s in samples for p in (s.image, s.mask) if p is not None}
        if self.output_dir.resolve() in {p.parent for p in inputs}:
            raise FileExistsError(f"Output folder {self.output_dir} is the folder of the input images: choose "
                                  f"another --output_dir (predictions must never mix with or replace inputs)")
        planned: dict[Path, str] = {}
        for s in samples:
            for path in self.outputs(s.id):
                path = path.resolve()
                if path in inputs:
                    raise FileExistsError(f"Prediction {path} would replace an input file: choose another "
                                          f"--output_dir")
                if path in planned:
                    raise FileExistsError(f"Images {planned[path]!r} and {s.id!r} would both be written to "
                                          f"{path}; rename one")
                planned[path] = s.id
        if not self.overwrite:
            existing = [p for p in planned if p.exists()]
            if existing:
                raise FileExistsError(f"{len({planned[p] for p in existing})} images already have predictions in "
                                      f"{self.output_dir} (e.g. {existing[0]}); pass --overwrite true to replace "
                                      f"them or choose another --output_dir")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage == "predict" and trainer.is_global_zero and hasattr(datamodule, "samples"):
            self.check_outputs(datamodule.samples(datamodule.test_split))

    @rank_zero_only
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        what = "PNG class indices and overlays" if self.overlays else "PNG class indices"
        Console(stderr=True, soft_wrap=True).print(f"Predictions ({what}) written to {self.output_dir}")

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: list[torch.Tensor],
                           batch_indices, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        flat = flat_palette(list(getattr(trainer.datamodule, "palette", None) or voc_palette()))
        palette = np.asarray(flat, np.uint8).reshape(256, 3)
        (self.output_dir / "overlays" if self.overlays else self.output_dir).mkdir(parents=True, exist_ok=True)
        for sample_id, labels, raw in zip(batch["id"], prediction, batch["image"]):
            labels = labels.cpu().numpy().astype(np.uint8)
            png = Image.fromarray(labels, mode="L").convert("P")
            png.putpalette(flat)
            png_path, *overlay_path = self.outputs(sample_id)
            png.save(png_path)
            if overlay_path:
                h, w = labels.shape
                image = raw[:, :h, :w].permute(1, 2, 0).cpu().numpy()
                names = getattr(trainer.datamodule, "class_names", None) or pl_module.class_names
                Image.fromarray(overlay(image, labels, palette, self.alpha, names)).save(overlay_path[0], quality=90)
