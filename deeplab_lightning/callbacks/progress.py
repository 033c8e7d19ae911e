"""The progress bar (ProgressBar): one bar per step-based run, plain lines in log files, no GPU waits."""
from __future__ import annotations

import time
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from rich.console import Console

from .. import compat
from .throughput import images_in


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

    ``label`` names what is evaluated (e.g. ``"r18_os8: multi-scale + flip"``) in the evaluation bar and lines,
    where several evaluations follow each other. Other arguments are ``RichProgressBar``'s.
    """

    def __init__(self, metrics_every_s: float = 1.0, show: Sequence[str] = ("train/loss",),
                 line_every_s: float = 30.0, label: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.label = label
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
        console = Console(**compat.console_kwargs(self))
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
                compat.set_bar_position(self, self.train_progress_bar_id, trainer.global_step)
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
        self._images += images_in(trainer, batch)
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
            what = f"{self.label}: {stage}" if self.label else stage
            self.plain.print(f"{what} batch {batch_idx + 1}/{total} | elapsed {_clock(elapsed)}{eta}",
                             markup=False, highlight=False, soft_wrap=True)

    @property
    def validation_description(self) -> str:
        return f"{self.label}: validation" if self.label else super().validation_description

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

    def _update_metrics(self, trainer, pl_module, *args, **kwargs) -> None:  # private: see compat.OVERRIDDEN
        if not self._skip_metrics:
            super()._update_metrics(trainer, pl_module, *args, **kwargs)

    def get_metrics(self, trainer, pl_module) -> dict[str, int | str | float | dict[str, float]]:
        items = super().get_metrics(trainer, pl_module)
        logged = trainer.callback_metrics
        for name in self.show:
            if name in logged:
                value = logged[name]
                items[name] = value.item() if isinstance(value, torch.Tensor) else value
        return items

    def _get_train_description(self, current_epoch: int) -> str:  # private in Lightning: see compat.OVERRIDDEN
        description = super()._get_train_description(current_epoch)
        if self.trainer.max_epochs is not None and self.trainer.max_epochs < 0:
            description = description.replace(f"/{self.trainer.max_epochs - 1}", "", 1)
        return description
