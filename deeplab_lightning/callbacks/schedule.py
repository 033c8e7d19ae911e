"""The learning-rate schedule: the papers' poly decay and V1's step decay (LRSchedule, PolyLR), and a warning
when a fit has no schedule."""
from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

NO_SCHEDULE = ("No learning-rate schedule: the learning rate stays at model.lr for the whole fit; add "
               "deeplab_lightning.callbacks.PolyLR to trainer.callbacks (the papers' poly schedule)")


def step_lr_factor(step: int, step_size: int, gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate before optimizer step ``step`` (0-based) under Caffe's "step" policy,
    which DeepLab V1 trained with (section 4.1: divided by 10 every 2,000 iterations): ``gamma ** (step //
    step_size)``."""
    if step_size <= 0:
        raise ValueError(f"the step schedule needs a positive step_size, got {step_size}")
    return gamma ** (step // step_size)


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


class LRSchedule(L.Callback):
    """Sets every parameter group's lr to ``initial_lr * factor(global_step)`` before each optimizer step, so
    groups keep their multipliers (head x10) and the schedule is exact after a resume.

    Args:
        policy: ``"poly"`` (V2, V3, V3+: :func:`poly_lr_factor`) or ``"step"`` (V1: :func:`step_lr_factor`).
        power: the poly exponent, 0.9 in every DeepLab paper.
        max_steps: the poly schedule's length; ``None`` takes ``trainer.max_steps``, else the estimated number
            of steps.
        step_size, gamma: the step policy multiplies the lr by ``gamma`` every ``step_size`` steps.
        warmup_steps, warmup_start_factor: optional linear warmup (not in the papers; off by default).
    """

    def __init__(self, policy: Literal["poly", "step"] = "poly", power: float = 0.9, max_steps: int | None = None,
                 step_size: int | None = None, gamma: float = 0.1, warmup_steps: int = 0,
                 warmup_start_factor: float = 0.0) -> None:
        if policy not in ("poly", "step"):
            raise ValueError(f"policy must be 'poly' or 'step', got {policy!r}")
        if policy == "step" and (step_size is None or step_size <= 0):
            raise ValueError(f"the step policy needs a positive step_size (V1: 2000), got {step_size!r}")
        self.policy = policy
        self.power = power
        self.max_steps = max_steps
        self.step_size = step_size
        self.gamma = gamma
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor

    def _total_steps(self, trainer: L.Trainer) -> int:
        if self.max_steps is not None:
            return self.max_steps
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        return int(trainer.estimated_stepping_batches)

    def factor(self, step: int, trainer: L.Trainer) -> float:
        """The multiplier of each group's initial lr before optimizer step ``step``."""
        if self.policy == "step":
            factor = step_lr_factor(step, self.step_size, self.gamma)
            if step < self.warmup_steps:
                factor *= self.warmup_start_factor + (1.0 - self.warmup_start_factor) * step / self.warmup_steps
            return factor
        return poly_lr_factor(step, self._total_steps(trainer), self.power, self.warmup_steps,
                              self.warmup_start_factor)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        factor = self.factor(trainer.global_step, trainer)
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


class PolyLR(LRSchedule):
    """:class:`LRSchedule` with the poly policy: the name the configs use for it."""

    def __init__(self, power: float = 0.9, max_steps: int | None = None, warmup_steps: int = 0,
                 warmup_start_factor: float = 0.0) -> None:
        super().__init__("poly", power, max_steps, warmup_steps=warmup_steps,
                         warmup_start_factor=warmup_start_factor)


class ScheduleCheck(L.Callback):
    """Warns (once, at the start of a fit) when neither an :class:`LRSchedule` callback nor ``configure_optimizers``
    schedules the learning rate. The command adds it to every fit."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.lr_scheduler_configs and not any(isinstance(c, LRSchedule) for c in trainer.callbacks):
            rank_zero_warn(NO_SCHEDULE)
