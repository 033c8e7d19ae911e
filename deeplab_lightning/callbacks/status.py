"""A fit's progress as a small JSON file that other processes read (the ablation queue's display, its report)."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import lightning as L

from ..runs.folder import write_text_atomic


class RunStatus(L.Callback):
    """Writes ``{"step", "max_steps", "eta_s", "train_s", "devices", "updated"}`` to ``path`` (atomically, by
    global rank 0) at most every ``every_s`` seconds while training and at its end. ``eta_s`` extrapolates the
    steps this process trained so far (None before two of them); ``train_s`` is the wall time of the fit over
    every attempt (a resumed fit adds to the one before), ``devices`` the processes it trains on and
    ``first_batch`` a fingerprint of the images of its first training batch (rank 0's share)."""

    def __init__(self, path: str, every_s: float = 1.0) -> None:
        self.path = Path(path)
        self.every_s = every_s
        self._start: tuple[float, int] | None = None
        self._before_s = 0.0  # the wall time of earlier attempts of this run
        self._first_batch: str | None = None
        self._written = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = (time.monotonic(), trainer.global_step)
        if trainer.global_step > 0:
            try:
                before = json.loads(self.path.read_text())
                self._before_s, self._first_batch = float(before.get("train_s") or 0.0), before.get("first_batch")
            except (OSError, ValueError):
                self._before_s = 0.0
        self._write(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0 and self._first_batch is None and isinstance(batch, dict):
            # what the run trained on first: runs of one seed see the same images, crops and flips
            self._first_batch = hashlib.sha256(batch["image"].cpu().numpy().tobytes()).hexdigest()[:16]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self._written >= self.every_s:
            self._write(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        now = time.monotonic()
        step, max_steps, eta = trainer.global_step, trainer.max_steps, None
        if self._start is not None and step - self._start[1] >= 2 and max_steps and max_steps > 0:
            eta = (now - self._start[0]) / (step - self._start[1]) * max(max_steps - step, 0)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        train_s = self._before_s + (now - self._start[0] if self._start is not None else 0.0)
        write_text_atomic(self.path, json.dumps({"step": step, "max_steps": max_steps, "eta_s": eta,
                                                 "train_s": train_s, "devices": trainer.world_size,
                                                 "first_batch": self._first_batch,
                                                 "updated": time.time()}))
        self._written = now
