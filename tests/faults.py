"""Callbacks that inject faults into a fit run by the command: SIGKILL (the OOM killer), SIGTERM (pre-emption,
scancel), a full disk."""
import os
import signal

import lightning as L


class SignalAtStep(L.Callback):
    """Sends ``signal`` (a name, e.g. ``SIGTERM``) to its own process after training step ``step``."""

    def __init__(self, step: int, signal: str = "SIGTERM") -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


class DiskFullAtSave(L.Callback):
    """Makes every checkpoint write from step ``step`` on fail with ENOSPC midway, as a full disk does (by
    replacing ``torch.save``: run it in a subprocess, or restore ``torch.save`` after the fit)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            import errno

            import torch

            def full(obj, f, *args, **kwargs):
                f.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")

            torch.save = full
