"""Callbacks that keep a fit's outcome safe: a checkpoint on SIGTERM, ``last.ckpt`` after every validation, a
validation of the final weights."""
from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..compat import save_last_checkpoint


class PreemptionCheckpoint(L.Callback):
    """When SIGTERM stops a fit (pre-emption, ``scancel``, a scheduler's time limit, ``kill``), saves a
    resumable ``last.ckpt`` in the checkpoint folder before the process ends (the ``deeplab-lightning``
    command then exits with status 143, not 0). Lightning stops at the end of the current step; the checkpoint
    is that step's, written atomically. Under SLURM, Lightning's own requeue (``--signal=SIGUSR1@120``, see
    ``scripts/slurm_fit.sbatch``) saves ``hpc_ckpt_N.ckpt`` and resumes from it. ``validate``, ``test`` and
    ``predict`` stop after the current batch (status 143, nothing saved). The command adds this callback to every
    subcommand."""

    @staticmethod
    def checkpoint_path(trainer: L.Trainer) -> Path:
        checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.dirpath), None)
        return Path(checkpoint.dirpath if checkpoint is not None else trainer.default_root_dir) / "last.ckpt"

    def _stop_evaluation(self, trainer: L.Trainer) -> None:
        # Lightning stops only a fit at SIGTERM; validate, test and predict would run to their end and exit 0.
        if trainer.received_sigterm and trainer.state.fn != "fit":
            raise SIGTERMException()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop_evaluation(trainer)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop_evaluation(trainer)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop_evaluation(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit" or not (isinstance(exception, SIGTERMException) or trainer.received_sigterm):
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        rank_zero_info(f"Stopped by SIGTERM after step {trainer.global_step}; saved {path}. Resume with the same "
                       f"command and --ckpt_path {path}")


class FinalValidation(L.Callback):
    """Ends every step-based fit with a validation of its final weights, whatever ``max_steps`` and
    ``val_check_interval``: the last step asks Lightning to stop, which validates (and so checkpoints, e.g.
    ``best.ckpt``) unless that step was validated anyway. The command adds it to every fit."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class CurrentLastCheckpoint(L.Callback):
    """Keeps every ``ModelCheckpoint(save_last=True)``'s ``last.ckpt`` the state of the latest validation of a fit:
    Lightning writes it only when a validation also writes a top-k checkpoint (a new best), so on a plateau it
    would hold an old step and a resumed run would train those steps again. Lightning runs checkpoint callbacks
    after the others, so the catch-up happens when the next step starts, or when training ends. The command adds
    this callback to every fit."""

    def __init__(self) -> None:
        self._validated = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = trainer.state.fn == "fit" and not trainer.sanity_checking

    def _catch_up(self, trainer: L.Trainer) -> None:
        if self._validated:
            self._validated = False
            for callback in trainer.checkpoint_callbacks:
                save_last_checkpoint(callback, trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._catch_up(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._catch_up(trainer)
