"""The run folder of a fit: never shared with another run, never overwritten.

A fit writes everything (config, run info, checkpoints, logs) under ``trainer.default_root_dir``. If that
folder already holds a run, the fit writes to the first free sibling ``<folder>-2``, ``<folder>-3`` ... and
says so, unless it continues a run: ``--ckpt_path`` names a checkpoint inside one of these folders, or the fit
is a requeued SLURM job whose folder holds the ``hpc_ckpt_*.ckpt`` Lightning saved before the requeue. A lock
file (``run.lock``, created atomically) marks the folder while a fit runs in it, so two fits started at once
take two folders, and a second fit continuing the same run is refused while the first is alive.
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from .processes import process_alive

LOCK_NAME = "run.lock"
RUN_FILES = ("config.yaml", "run_info.json", LOCK_NAME)
PATH_KEYS = ("default_root_dir", "save_dir", "dirpath", "output_dir")  # config keys that name run outputs
ENV_RUN_DIR = "DEEPLAB_RUN_DIR"  # the chosen folder, for the processes DDP launches after this one


class RunFolderBusy(RuntimeError):
    """Another live process is writing to the run folder."""


def previous_run(folder: Path) -> list[str]:
    """What in ``folder`` shows an earlier run: its config, run info, lock or any checkpoint (relative paths)."""
    if not folder.is_dir():
        return []
    found = [name for name in RUN_FILES if (folder / name).exists()]
    return found + sorted(str(p.relative_to(folder)) for p in folder.rglob("*.ckpt"))


def continues_run(folder: Path, ckpt_path: str | None) -> bool:
    """Whether a fit continues the run in ``folder``: resumes from a checkpoint inside it, or is that run's
    SLURM job requeued, which Lightning resumes from the ``hpc_ckpt_*.ckpt`` it saved there."""
    if ckpt_path is not None and ckpt_path not in ("last", "best", "hpc", "registry"):
        return Path(ckpt_path).resolve().is_relative_to(folder.resolve())
    job = os.environ.get("SLURM_JOB_ID")
    if job is None or not any(folder.glob("hpc_ckpt_*.ckpt")):
        return False
    try:
        return json.loads((folder / "run_info.json").read_text()).get("slurm_job_id") == job
    except (OSError, ValueError):
        return False


def numbered_candidates(path: Path, folder: bool = False) -> Iterator[Path]:
    """``path``, then ``<stem>-2<suffix>``, ``<stem>-3<suffix>`` ... without end; for a ``folder`` the number
    follows the whole name (``<name>-2`` ...)."""
    stem, suffix = (path.name, "") if folder else (path.stem, path.suffix)
    yield path
    for n in itertools.count(2):
        yield path.with_name(f"{stem}-{n}{suffix}")


def unused_path(path: Path, folder: bool = False) -> Path:
    """The first of :func:`numbered_candidates` that does not exist."""
    return next(p for p in numbered_candidates(path, folder) if not p.exists())


def _lock_owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": platform.node(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "command": sys.argv}


def _stale(lock: Path) -> bool:
    """Whether ``lock`` was left by a process that no longer runs (or by this SLURM job before a requeue)."""
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return False
    job = os.environ.get("SLURM_JOB_ID")
    if job is not None and owner.get("slurm_job_id") == job:
        return True
    return owner.get("host") == platform.node() and not process_alive(int(owner.get("pid", -1)))


def _try_lock(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder / LOCK_NAME, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(_lock_owner(), f)
    return True


def claim_run_folder(folder: Path, ckpt_path: str | None) -> Path:
    """Lock and return the folder this fit writes to: the first of ``folder``, ``<folder>-2`` ... whose run it
    continues or that holds no run. Raises :class:`RunFolderBusy` when the run to continue is still being
    written by another live process."""
    for candidate in numbered_candidates(folder, folder=True):
        if continues_run(candidate, ckpt_path):
            lock = candidate / LOCK_NAME
            if not _try_lock(candidate):
                if not _stale(lock):
                    raise RunFolderBusy(
                        f"Another fit is writing to {candidate} ({lock}: {lock.read_text().strip()}). Wait for it "
                        f"to end; if it no longer runs (a killed job on another machine), delete {lock} and retry")
                lock.write_text(json.dumps(_lock_owner()))
            return candidate
        if not previous_run(candidate) and _try_lock(candidate):
            if candidate != folder:
                rank_zero_warn(f"{folder} holds another run ({', '.join(previous_run(folder)[:3])}); this run "
                               f"writes to {candidate}. To continue that run instead, pass --ckpt_path "
                               f"{folder}/.../last.ckpt")
            return candidate
    raise AssertionError("unreachable: the candidates never end")


def release_run_folder(folder: Path) -> None:
    """Remove this process's lock from ``folder`` (a lock of another process is left alone)."""
    lock = folder / LOCK_NAME
    try:
        if json.loads(lock.read_text()).get("pid") == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass


def relocate(config: Any, old: Path, new: Path) -> None:
    """Rewrite, in place, every output path (``PATH_KEYS``) of a parsed config (namespaces and lists) that lies
    under ``old`` to lie under ``new``: the trainer's root, the loggers' ``save_dir``, the checkpoint
    ``dirpath`` ..."""
    items = config.items() if hasattr(config, "items") else enumerate(config)
    for key, value in list(items):
        if isinstance(value, str) and str(key).rsplit(".", 1)[-1] in PATH_KEYS:
            path = Path(os.path.abspath(value))
            if path.is_relative_to(os.path.abspath(old)):
                config[key] = str(new / path.relative_to(os.path.abspath(old)))
        elif hasattr(value, "items") or isinstance(value, list):
            relocate(value, old, new)
