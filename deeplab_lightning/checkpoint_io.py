"""Checkpoint writing that never leaves a truncated file behind."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, flushes it to disk, then renames it
    over the target (``os.replace`` is atomic on one filesystem). A run killed while saving keeps the
    previous ``last.ckpt`` intact. Lightning's own save stages the file in the system temp folder, whose move
    is a copy when that is another filesystem. URLs (``s3://`` ...) fall back to Lightning's writer.
    The ``deeplab-lightning`` command uses this plugin by default.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
