"""What a NaN or Inf does to a run: the training loss (``model.nonfinite_loss``), the evaluation loss, and the
weights of every checkpoint. No checkpoint is ever written from non-finite weights."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn


class _LossCheck:
    """Whether a training loss is finite, copied to the host without waiting for the GPU.

    ``bool(torch.isfinite(loss))`` in the step would make the CPU wait for the forward pass every step, so it
    could not prepare the next batch meanwhile (with the progress bar's per-step read of the loss, such syncs
    cost V3+ 28 % of its images/s in ``benchmarks/bench.py``'s Lightning fit on an H100). The flag is copied
    asynchronously and read at the next hook, by when it has arrived.
    """

    def __init__(self, loss: torch.Tensor, where: Callable[[], str]) -> None:
        self.loss, self.where = loss.detach(), where  # where() describes the step, formatted only on failure
        flag = torch.isfinite(self.loss)
        self.event = None
        if flag.is_cuda:
            self.flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            self.flag.copy_(flag, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.flag = flag

    def finite(self) -> bool:
        if self.event is not None:
            self.event.synchronize()  # waits for this loss only, not for the work queued after it
        return bool(self.flag)


class NonFiniteGuard:
    """Checks for non-finite losses and weights; see ``SegmentationModule``'s ``nonfinite_loss`` and
    ``max_skipped_share``. ``skipped_steps`` is saved in checkpoints."""

    def __init__(self, policy: str = "raise", max_skipped_share: float = 0.01) -> None:
        if policy not in ("raise", "skip", "ignore"):
            raise ValueError(f"nonfinite_loss must be 'raise', 'skip' or 'ignore', got {policy!r}")
        self.policy, self.max_skipped_share = policy, max_skipped_share
        self.skipped_steps = 0
        self._pending: _LossCheck | None = None  # the last step's loss, checked at the next hook
        self._eval_nonfinite: torch.Tensor | None = None  # whether any evaluation loss was NaN/Inf (on device)

    def training_loss(self, loss: torch.Tensor, where: Callable[[], str], total_steps: Callable[[], int]) -> bool:
        """Whether the step may use ``loss``: False when it is skipped (``skip``: the step waits for the loss on
        the host); with ``raise`` it is checked at the next hook without a host sync."""
        if self.policy == "skip" and not bool(torch.isfinite(loss)):
            self._skip(loss, where(), total_steps())
            return False
        if self.policy == "raise":
            self._pending = _LossCheck(loss, where)
        return True

    def _skip(self, loss: torch.Tensor, where: str, total_steps: int) -> None:
        """Count a skipped step; fail once more than ``max_skipped_share`` of the run's steps were skipped."""
        self.skipped_steps += 1
        limit = self.max_skipped_share * total_steps
        if self.skipped_steps > limit:
            raise FloatingPointError(
                f"{self.skipped_steps} optimizer steps were skipped for a non-finite training loss (the last at "
                f"{where}), more than model.max_skipped_share={self.max_skipped_share} of {total_steps} steps: "
                f"the run is not training. Lower model.lr or check the data (deeplab-lightning check-data)")
        rank_zero_warn(f"Skipping the optimizer step: training loss is {loss.item()} at {where} "
                       f"({self.skipped_steps} skipped, at most {int(limit)} allowed)")

    def raise_if_training_loss_was_nonfinite(self) -> None:
        """Raise if the last checked training loss was NaN or Inf (``raise``)."""
        check, self._pending = self._pending, None
        if check is not None and not check.finite():
            raise FloatingPointError(f"Training loss is {check.loss.item()} at {check.where()}; lower model.lr, "
                                     f"check these samples, or set model.nonfinite_loss: skip")

    def evaluation_loss(self, loss: torch.Tensor) -> None:
        """Remember, on the device, whether an evaluation loss was non-finite (read once per evaluation)."""
        nonfinite = ~torch.isfinite(loss.detach())
        self._eval_nonfinite = nonfinite if self._eval_nonfinite is None else self._eval_nonfinite | nonfinite

    def raise_if_evaluation_was_nonfinite(self, stage: str, step: int,
                                          any_process: Callable[[bool], bool] = bool) -> None:
        """Raise if any evaluation loss of this epoch (on any process: ``any_process`` reduces the flag) was NaN
        or Inf: the weights are broken and the metrics meaningless; in ``fit`` this stops the run before the
        validation's checkpoint."""
        flag, self._eval_nonfinite = self._eval_nonfinite, None
        if any_process(flag is not None and bool(flag)):
            raise FloatingPointError(
                f"The {stage} loss is non-finite (NaN or Inf) at step {step}: the weights produce non-finite "
                f"scores, so no metric or checkpoint is written from them. Lower model.lr (training), or use "
                f"another checkpoint (evaluation)")

    def check_checkpoint(self, checkpoint: dict[str, Any], step: int) -> None:
        """Refuse to save weights a NaN step broke, or any non-finite weight (one host sync per checkpoint)."""
        self.raise_if_training_loss_was_nonfinite()
        floats = [(name, t) for name, t in checkpoint["state_dict"].items() if t.is_floating_point()]
        finite = torch.stack([t.isfinite().all() for _, t in floats]).cpu()
        if not finite.all():
            broken = [name for (name, _), ok in zip(floats, finite.tolist()) if not ok]
            raise FloatingPointError(f"Not saving the checkpoint of step {step}: {len(broken)} weight tensors are "
                                     f"non-finite ({', '.join(broken[:3])}...). Lower model.lr; the run's earlier "
                                     f"checkpoints are unchanged")
