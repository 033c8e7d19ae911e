"""The state of each run of an ablation, kept in the run's own folder so that any process can read it (the
sequential loop, a child of the local queue, a SLURM array task, the report):

- ``run.yaml``: the run's config; ``result.json``: its report row, written atomically when the run is done;
- ``attempt.json``: the latest attempt (host, pid, SLURM job, log file) and how it ended (failed, interrupted);
- ``status.json``: step, max_steps and ETA while the fit trains (:class:`~deeplab_lightning.callbacks.RunStatus`);
- ``ablation.lock``: the process that owns the run now; two processes never write one run's folder;
- ``earlier/N/``: the files of a run trained under another config (or before ``--force``), kept, never replaced.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..run_folder import numbered_candidates, stale_lock, write_text_atomic
from .spec import STATUS_FILE

CONFIG, RESULT, ATTEMPT, LOCK, EARLIER = "run.yaml", "result.json", "attempt.json", "ablation.lock", "earlier"
ENV_LOG = "DEEPLAB_ABLATION_LOG"  # the log file of this attempt, set by the launcher (local queue, SLURM script)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, default=str))


def finished_row(folder: Path, config: str, evaluate: dict[str, Any]) -> dict[str, Any] | None:
    """The run's report row if it finished with exactly this config text and these evaluations."""
    row = read_json(folder / RESULT)
    try:
        same_config = (folder / CONFIG).read_text() == config
    except OSError:
        return None
    return row if row is not None and same_config and row.get("evaluate") == evaluate else None


def resume_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint a fit in ``folder`` can continue from: ``last.ckpt`` (saved after validations and
    at SIGTERM) or Lightning's ``hpc_ckpt_N.ckpt`` (saved when SLURM signals a requeue); earlier runs excluded."""
    candidates = [p for p in folder.rglob("*.ckpt")
                  if (p.name == "last.ckpt" or p.name.startswith("hpc_ckpt_"))
                  and EARLIER not in p.relative_to(folder).parts]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def archive_earlier(folder: Path) -> Path | None:
    """Move what ``folder`` holds (but its lock and earlier runs) into ``earlier/N``; returns that folder."""
    entries = [p for p in folder.iterdir() if p.name not in (LOCK, EARLIER)] if folder.is_dir() else []
    if not entries:
        return None
    target = next(p for p in numbered_candidates(folder / EARLIER / "1", folder=True) if not p.exists())
    target.mkdir(parents=True)
    for entry in entries:
        entry.rename(target / entry.name)
    return target


def slurm_restart() -> str | None:
    """How often SLURM requeued this job (None outside SLURM): tells this attempt from the one before."""
    return os.environ.get("SLURM_RESTART_COUNT", "0") if os.environ.get("SLURM_JOB_ID") else None


def start_attempt(folder: Path, resume_from: Path | None) -> dict[str, Any]:
    """Record this process's attempt at the run (``attempt.json``) and return the record."""
    attempt = {"pid": os.getpid(), "host": os.uname().nodename, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
               "restart": slurm_restart(), "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
               "log": os.environ.get(ENV_LOG), "started": time.time(),
               "resume_from": str(resume_from) if resume_from else None, "outcome": None}
    write_json(folder / ATTEMPT, attempt)
    return attempt


def end_attempt(folder: Path, attempt: dict[str, Any], outcome: str, error: str | None = None) -> None:
    """Record how the attempt ended: ``done``, ``failed`` (with the error) or ``interrupted``."""
    write_json(folder / ATTEMPT, {**attempt, "outcome": outcome, "error": error, "ended": time.time()})


@dataclass
class RunState:
    """What one run of an ablation is doing, read from its folder."""

    name: str
    folder: Path
    status: str  # "done", "running", "failed", "interrupted", "outdated" or "not started"
    detail: str = ""
    row: dict[str, Any] | None = None
    log: str | None = None
    step: int | None = None
    max_steps: int | None = None
    eta_s: float | None = None


def read_state(name: str, folder: Path, config: str, evaluate: dict[str, Any]) -> RunState:
    """The state of run ``name`` whose config text is ``config``."""
    row = finished_row(folder, config, evaluate)
    if row is not None:
        return RunState(name, folder, "done", row=row, step=row.get("steps"))
    attempt = read_json(folder / ATTEMPT) or {}
    progress = read_json(folder / STATUS_FILE) or {}
    state = RunState(name, folder, "not started", log=attempt.get("log"), step=progress.get("step"),
                     max_steps=progress.get("max_steps"))
    lock = folder / LOCK
    if lock.exists() and not stale_lock(lock):
        owner = read_json(lock) or {}
        job = f", SLURM job {owner['slurm_job_id']}" if owner.get("slurm_job_id") else ""
        state.status, state.detail = "running", f"pid {owner.get('pid')} on {owner.get('host')}{job}"
        state.eta_s = progress.get("eta_s")
    elif attempt.get("outcome") == "failed":
        state.status, state.detail = "failed", str(attempt.get("error"))
    elif (folder / RESULT).exists() and read_json(folder / RESULT) is None:
        state.status, state.detail = "outdated", f"its {RESULT} is unreadable: trains again"
    elif attempt.get("outcome") == "done" or (folder / RESULT).exists():
        state.status, state.detail = "outdated", "finished under another config or evaluate: trains again"
    elif attempt:  # stopped by a signal, or killed (its lock left behind)
        checkpoint = resume_checkpoint(folder)
        state.status = "interrupted"
        state.detail = (f"continues from {checkpoint.name} when the ablation runs again" if checkpoint
                        else "starts again when the ablation runs again (no checkpoint yet)")
    return state
