"""The state of each run of an ablation, kept in the run's own folder so that any process can read it (the
sequential loop, a child of the local queue, a SLURM array task, the report):

- ``run.yaml``: the run's config; ``result.json``: its report row, written atomically when the run is done;
- ``attempt.json``: the latest attempt (host, pid, SLURM job, log file) and how it ended (failed, interrupted);
- ``status.json``: step, max_steps and ETA while the fit trains (:class:`~deeplab_lightning.callbacks.RunStatus`);
- ``ablation.lock``: the process that owns the run now; two processes never write one run's folder;
- ``earlier/N/``: the files of a run trained under another config (or before ``--force``), kept, never replaced.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..runs.folder import stale_lock, write_text_atomic
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


def config_meaning(text: str) -> Any:
    """A run config as what it means: parsed, with its run folder (``trainer.default_root_dir``, however the
    launcher that wrote it spelt the path) replaced by ``<run>`` wherever a value is that folder or a path in it."""
    config = yaml.safe_load(text)
    trainer = config.get("trainer") if isinstance(config, dict) else None
    root = trainer.get("default_root_dir") if isinstance(trainer, dict) else None
    if not isinstance(root, str) or not root:
        return config
    root = os.path.normpath(root)

    def canonical(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: canonical(value) for key, value in node.items()}
        if isinstance(node, list):
            return [canonical(value) for value in node]
        if isinstance(node, str) and node:
            path = os.path.normpath(node)
            if path == root or path.startswith(root + os.sep):
                return "<run>" + path[len(root):]
        return node

    return canonical(config)


def same_config(written: str, planned: str) -> bool:
    """Whether two run configs mean the same run (see :func:`config_meaning`): a run finished by one launcher is
    finished for every other, whatever the spelling of its ablation file or ``output_dir``."""
    if written == planned:
        return True
    try:
        return config_meaning(written) == config_meaning(planned)
    except yaml.YAMLError:
        return False


def written_config(folder: Path) -> str | None:
    """The text of the run's ``run.yaml``, or None when there is none."""
    try:
        return (folder / CONFIG).read_text()
    except OSError:
        return None


def finished_row(folder: Path, config: str, evaluate: dict[str, Any]) -> dict[str, Any] | None:
    """The run's report row if it finished with this config (in meaning) and these evaluations."""
    row, written = read_json(folder / RESULT), written_config(folder)
    if row is None or written is None or not same_config(written, config):
        return None
    return row if row.get("evaluate") == evaluate else None


def resume_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint a fit in ``folder`` can continue from: ``last.ckpt`` (saved after validations and
    at SIGTERM) or Lightning's ``hpc_ckpt_N.ckpt`` (saved when SLURM signals a requeue); earlier runs excluded."""
    candidates = [p for p in folder.rglob("*.ckpt")
                  if (p.name == "last.ckpt" or p.name.startswith("hpc_ckpt_"))
                  and EARLIER not in p.relative_to(folder).parts]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def archive_earlier(folder: Path) -> Path | None:
    """Move what ``folder`` holds (but its lock and earlier runs) into ``earlier/N`` (the first free N from 1);
    returns that folder. The log this attempt writes to (``$DEEPLAB_ABLATION_LOG``) is copied, not moved, so
    that ``attempt.json`` names the file that holds the current attempt."""
    entries = [p for p in folder.iterdir() if p.name not in (LOCK, EARLIER)] if folder.is_dir() else []
    if not entries:
        return None
    target = next(folder / EARLIER / str(n) for n in itertools.count(1) if not (folder / EARLIER / str(n)).exists())
    target.mkdir(parents=True)
    live_log = os.environ.get(ENV_LOG)
    for entry in entries:
        if live_log and os.path.isfile(live_log) and entry.is_file() and entry.samefile(live_log):
            shutil.copy2(entry, target / entry.name)
        else:
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
