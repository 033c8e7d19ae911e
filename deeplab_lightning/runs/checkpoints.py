"""Checkpoint writing that never leaves a truncated file behind, and reading that names a bad file."""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from .processes import process_alive


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete ``.<name>.<pid>.tmp`` files beside ``path`` left by writers that no longer run (a save killed
    midway); returns what was removed."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.tmp$")
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        match = pattern.match(tmp.name)
        if match and int(match.group(1)) != os.getpid() and not process_alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, flushes it to disk, then renames it
    over the target (``os.replace`` is atomic on one filesystem). A run killed while saving keeps the
    previous ``last.ckpt`` intact, and the next save removes the temporary file the killed one left. Lightning's
    own save stages the file in the system temp folder, whose move is a copy when that is another filesystem.
    URLs (``s3://`` ...) fall back to Lightning's writer.

    Reading unpickles tensors and plain Python values only (``weights_only=True``, whatever the caller asks): a
    checkpoint that holds other objects could run code when loaded, and is refused as unsafe, naming them. A
    file that is empty, truncated or not a checkpoint (its ``state_dict`` or ``hyper_parameters`` not a mapping
    included) raises a ``ValueError`` naming the file. The
    ``deeplab-lightning`` command installs this plugin unless another checkpoint IO plugin is configured.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise OSError(err.errno, f"Could not write checkpoint {path}: {err.strerror or err}. The previous "
                                         f"file there, if any, is unchanged; free disk space or choose another "
                                         f"folder") from err
            raise

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: Any = None,
                        mmap: bool = False) -> dict[str, Any]:
        """Lightning's reading, weights only (``weights_only`` is accepted for Lightning's signature and ignored;
        ``mmap``: memory-map a local file, so reading a few keys costs no copy of the weights), with a bad or
        unsafe file named."""
        if "://" not in str(path) and not os.path.isfile(path):
            what = "is a folder" if os.path.isdir(path) else "does not exist"
            raise FileNotFoundError(f"Checkpoint {path} {what}: pass a checkpoint file (*.ckpt)")
        try:
            if mmap:
                checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
            else:
                checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            if "weights only load failed" not in str(err).lower():
                raise _unreadable(path, err) from err
            found = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(err))))
            if not found:  # not a pickle of objects at all: a text file, an image ...
                raise _unreadable(path, None) from None
            raise ValueError(f"Checkpoint {path} is unsafe: besides weights it holds Python objects "
                             f"({', '.join(found)}) whose loading can run code, so "
                             f"it is not loaded. Only load it if you trust its author: in Python, "
                             f"torch.load(path, weights_only=False), then save just its 'state_dict'") from None
        except Exception as err:  # torch.load's errors name neither the file nor the problem (EOFError, KeyError)
            raise _unreadable(path, err) from err
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError(f"{path} is a PyTorch file but not a Lightning checkpoint (no 'state_dict'); pass a "
                             f"checkpoint written by deeplab-lightning fit")
        for key in ("state_dict", "hyper_parameters"):
            if key in checkpoint and not isinstance(checkpoint[key], Mapping):
                raise ValueError(f"Checkpoint {path} is malformed: its {key!r} is a {type(checkpoint[key]).__name__}, "
                                 f"not a mapping of names to values; use another checkpoint of the run (last.ckpt "
                                 f"or best.ckpt)")
        return checkpoint


def _unreadable(path: str | os.PathLike, err: Exception | None) -> ValueError:
    size = os.path.getsize(path) if os.path.isfile(path) else None
    what = "is empty (0 bytes)" if size == 0 else "is not a readable PyTorch checkpoint" + (f" ({err!r})" if err else "")
    return ValueError(f"Checkpoint {path} {what}: it may be truncated or another kind of file. Use another "
                      f"checkpoint of the run (last.ckpt or best.ckpt)")


def install_atomic_checkpoint_io(strategy: Any) -> None:
    """Use :class:`AtomicCheckpointIO` for ``strategy`` unless the user configured their own checkpoint IO."""
    current = strategy.checkpoint_io
    if type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
    elif not isinstance(current, AtomicCheckpointIO):
        rank_zero_warn(f"Checkpoints are written by the configured {type(current).__name__}, not by "
                       f"deeplab_lightning's AtomicCheckpointIO: a save killed midway may leave a broken file")
