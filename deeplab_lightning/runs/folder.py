"""The run folder of a fit: never shared with another run, never overwritten.

A fit writes everything (config, run info, checkpoints, logs) under ``trainer.default_root_dir``. If that
folder already holds a run, the fit writes to the first free sibling ``<folder>-2``, ``<folder>-3`` ... and
says so, unless it continues a run: ``--ckpt_path`` names a checkpoint inside one of these folders, or the fit
is a requeued SLURM job whose folder holds the ``hpc_ckpt_*.ckpt`` Lightning saved before the requeue. A lock
file (``run.lock``, created atomically) marks the folder while a fit runs in it, so two fits started at once
take two folders, and a second fit continuing the same run is refused while the first is alive.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from .processes import process_alive

LOCK_NAME = "run.lock"
RUN_FILES = ("config.yaml", "run_info.json", LOCK_NAME)
PATH_KEYS = ("default_root_dir", "save_dir", "dirpath", "output_dir")  # config keys that name run outputs
ENV_RUN_DIR = "DEEPLAB_RUN_DIR"  # the chosen folder, for the processes DDP launches after this one
ENV_OWNED_RUN_DIR = "DEEPLAB_OWNED_RUN_DIR"  # a folder whose run this fit continues, whatever it holds (ablate)
TAKEOVER_WAIT_S = 10  # how long a process waits for another to finish taking over a stale lock


class RunFolderBusy(RuntimeError):
    """Another live process is writing to the run folder."""


def previous_run(folder: Path) -> list[str]:
    """What in ``folder`` shows an earlier run: its config, run info, lock or any checkpoint (relative paths)."""
    if not folder.is_dir():
        return []
    found = [name for name in RUN_FILES if (folder / name).exists()]
    return found + sorted(str(p.relative_to(folder)) for p in folder.rglob("*.ckpt"))


def continues_run(folder: Path, ckpt_path: str | None) -> bool:
    """Whether a fit continues the run in ``folder``: resumes from a checkpoint inside it, is that run's
    SLURM job requeued, which Lightning resumes from the ``hpc_ckpt_*.ckpt`` it saved there, or is a run of an
    ablation, which owns the folder (``$DEEPLAB_OWNED_RUN_DIR``, set by :mod:`deeplab_lightning.ablate`)."""
    owned = os.environ.get(ENV_OWNED_RUN_DIR)
    if owned and Path(owned).resolve() == folder.resolve():
        return True
    if ckpt_path is not None and ckpt_path not in ("last", "best", "hpc", "registry"):
        return Path(ckpt_path).resolve().is_relative_to(folder.resolve())
    job = os.environ.get("SLURM_JOB_ID")
    if job is None or not any(folder.glob("hpc_ckpt_*.ckpt")):
        return False
    try:
        return json.loads((folder / "run_info.json").read_text()).get("slurm_job_id") == job
    except (OSError, ValueError):
        return False


def latest_last_checkpoint(folder: Path) -> Path:
    """``--ckpt_path last``: the newest ``last.ckpt`` of the run in ``folder`` or its ``-2``, ``-3`` ... siblings;
    raises naming the folder when there is none (Lightning would warn and train from step 0)."""
    found = []
    for candidate in numbered_candidates(folder, folder=True):
        if not candidate.is_dir():
            break
        found += candidate.rglob("last.ckpt")
    if not found:
        raise FileNotFoundError(f"--ckpt_path last: no last.ckpt in {folder} or its numbered siblings; pass the "
                                f"checkpoint's path, or leave --ckpt_path out to start a new run")
    return max(found, key=lambda p: p.stat().st_mtime)


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


def lock_owner() -> dict[str, Any]:
    """Who holds a lock this process takes: pid, host, SLURM job, command line, and when (so that no two owners'
    records are the same text)."""
    return {"pid": os.getpid(), "host": platform.node(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "command": sys.argv, "since": time.time()}


def slurm_job_active(job_id: str) -> bool | None:
    """Whether SLURM still lists job ``job_id`` (pending, running, requeued ...); None without ``squeue``."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.returncode == 0 and bool(out.stdout.strip())


def stale_lock(lock: Path) -> bool:
    """Whether ``lock`` was left by a process that no longer runs (see :func:`stale_owner`)."""
    try:
        return stale_owner(lock.read_text())
    except OSError:
        return False


def stale_owner(record: str) -> bool:
    """Whether the lock record ``record`` names a process that no longer runs: its pid is gone on this host, its
    SLURM job is this one before a requeue, or SLURM no longer lists its job."""
    try:
        owner = json.loads(record)
    except ValueError:
        return False
    if not isinstance(owner, dict):
        return False
    job, owner_job = os.environ.get("SLURM_JOB_ID"), owner.get("slurm_job_id")
    if job is not None and owner_job == job:
        return True
    if owner.get("host") == platform.node():
        return not process_alive(int(owner.get("pid", -1)))
    return owner_job is not None and slurm_job_active(owner_job) is False


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file renamed over it: readers see the old or the new text, never a
    part (results and status files that other processes read)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def try_lock(lock: Path, owner: dict[str, Any] | None = None) -> bool:
    """Create ``lock`` atomically holding ``owner`` (default :func:`lock_owner`); False if it exists."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(owner or lock_owner(), f)
    return True


def take_lock(lock: Path, what: str, owner: dict[str, Any] | None = None) -> None:
    """Take ``lock``, or a stale one (see :func:`stale_owner`); raises :class:`RunFolderBusy` naming the live
    owner and ``what`` it is writing. Of processes racing for a dead owner's lock exactly one wins
    (:func:`_take_over`)."""
    owner = owner or lock_owner()
    for _ in range(100):  # a lock released and taken again meanwhile is read again
        if try_lock(lock, owner):
            return
        try:
            held = lock.read_text()
        except FileNotFoundError:
            continue
        if not stale_owner(held):
            raise RunFolderBusy(
                f"Another process is writing to {what} ({lock}: {held.strip()}). Wait for it to end; if it no "
                f"longer runs (a killed job on another machine), delete {lock} and retry")
        if _take_over(lock, held, owner):
            return
    raise RunFolderBusy(f"{lock} changed owner 100 times while this process tried to take it ({what}); retry")


def _take_over(lock: Path, held: str, owner: dict[str, Any]) -> bool:
    """Replace the stale record ``held`` in ``lock`` by ``owner``; False when another process took it first.

    The processes that found the same stale record race to create its takeover file (``O_EXCL``: one wins); the
    winner replaces the lock only if it still holds that record. Every owner's record is unique (pid, host,
    time), so a late process that wins the takeover file after the winner removed it finds a new record and
    gives up."""
    breaker = lock.with_name(f"{lock.name}.takeover-{hashlib.sha256(held.encode()).hexdigest()[:16]}")
    try:
        fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        deadline = time.monotonic() + TAKEOVER_WAIT_S
        while time.monotonic() < deadline:  # the winner replaces the record within milliseconds
            with contextlib.suppress(FileNotFoundError):
                if lock.read_text() == held:
                    time.sleep(0.01)
                    continue
            return False
        raise RunFolderBusy(f"{lock} is stale and {breaker} shows a takeover that did not finish in "
                            f"{TAKEOVER_WAIT_S} s (its process was killed): delete both and retry") from None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        try:
            if lock.read_text() != held:
                return False
        except FileNotFoundError:
            return False
        write_text_atomic(lock, json.dumps(owner))
        return True
    finally:
        breaker.unlink(missing_ok=True)


def release_lock(lock: Path) -> None:
    """Remove ``lock`` if this process holds it (a lock of another process is left alone)."""
    try:
        if json.loads(lock.read_text()).get("pid") == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass


def claim_run_folder(folder: Path, ckpt_path: str | None) -> Path:
    """Lock and return the folder this fit writes to: the first of ``folder``, ``<folder>-2`` ... whose run it
    continues or that holds no run. Raises :class:`RunFolderBusy` when the run to continue is still being
    written by another live process."""
    for candidate in numbered_candidates(folder, folder=True):
        if continues_run(candidate, ckpt_path):
            take_lock(candidate / LOCK_NAME, candidate)
            return candidate
        if not previous_run(candidate) and try_lock(candidate / LOCK_NAME):
            if candidate != folder:
                last = next(iter(sorted(folder.rglob("last.ckpt"))), None)
                rank_zero_warn(f"{folder} holds another run ({', '.join(previous_run(folder)[:3])}); this run "
                               f"writes to {candidate}. To continue that run instead, pass --ckpt_path "
                               f"{last if last is not None else 'with one of its checkpoints'}")
            return candidate
    raise AssertionError("unreachable: the candidates never end")


def release_run_folder(folder: Path) -> None:
    """Remove this process's lock from ``folder``."""
    release_lock(folder / LOCK_NAME)


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` when it holds no file at any depth (a fit that failed before writing anything), so that a
    failed command leaves no empty ``runs/x-2`` behind; a folder holding any file is left as it is."""
    if not folder.is_dir() or any(p.is_file() or p.is_symlink() for p in folder.rglob("*")):
        return
    for sub in sorted((p for p in folder.rglob("*")), key=lambda p: len(p.parts), reverse=True):
        sub.rmdir()
    folder.rmdir()


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
