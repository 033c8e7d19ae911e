"""Training throughput: images per second over all processes (Throughput), and the per-step image count."""
from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


def images_in(trainer: L.Trainer, batch: Any) -> int:
    """The images one training step took over all processes (0 for a batch that is not a dict of ``image``)."""
    return len(batch["image"]) * trainer.world_size if isinstance(batch, dict) else 0


class Throughput(L.Callback):
    """Measures training images per second over all processes, after ``warmup_steps`` and without the time
    spent in validation (a resumed fit measures from its first step past the warm-up); logs ``train/img_per_s`` at
    each validation and at the end, and keeps ``img_per_s`` and the number of ``steps`` measured.

    The clock is read (and the GPU synchronised) only at the window's ends and around validations, never
    inside a training step.
    """

    def __init__(self, warmup_steps: int = 5) -> None:
        self.warmup_steps = warmup_steps
        self.img_per_s: float | None = None
        self.steps = 0  # training steps measured
        self._images, self._seconds, self._since = 0, 0.0, None

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.warmup_steps and self._since is None and self._images == 0:
            self._since = self._now(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._since is not None:
            self._images += images_in(trainer, batch)
            self.steps += 1

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
