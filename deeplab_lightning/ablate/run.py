"""One run of an ablation, by whichever process is given it: take the run's folder, continue its fit from the
newest checkpoint there (or start it), evaluate it and write its result; a finished run is not trained again.

Under DDP (``--gpus_per_run`` > 1) only global rank 0 owns the folder. The other ranks train with the checkpoint
rank 0 chose and leave the evaluation to it: those Lightning starts run rank 0's ``fit`` command line, those
``srun`` starts (one task per GPU) wait for rank 0's attempt record.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..commands.cli import PREEMPTED_EXIT_CODE
from ..runs.folder import ENV_OWNED_RUN_DIR, lock_owner, release_lock, take_lock
from .evaluate import train_and_evaluate
from .spec import Ablation, PlannedRun
from .state import (ATTEMPT, CONFIG, EARLIER, LOCK, RESULT, archive_earlier, end_attempt, finished_row, read_json,
                    resume_checkpoint, same_config, slurm_restart, start_attempt, write_json,
                    written_config)

WORKER_WAIT_S = 600  # how long a rank > 0 started by srun waits for rank 0 to prepare the run


def worker_rank() -> int:
    """This process's global rank under DDP, from the variables Lightning and SLURM set (0 otherwise)."""
    return max(int(os.environ.get(k, 0) or 0) for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables (inherited by the processes DDP starts) for the duration of the block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _worker_fit(run_dir: Path) -> None:
    """A DDP rank > 0 that ``srun`` started: train with the checkpoint rank 0 chose, read from the attempt it
    records for this SLURM job and restart."""
    from ..commands.cli import main as cli_main

    deadline = time.monotonic() + WORKER_WAIT_S
    job = os.environ.get("SLURM_JOB_ID")
    while (attempt := read_json(run_dir / ATTEMPT) or {}).get("slurm_job_id") != job \
            or attempt.get("restart") != slurm_restart():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {worker_rank()} waited {WORKER_WAIT_S} s for rank 0 to start the run in "
                               f"{run_dir} ({ATTEMPT} of SLURM job {job})")
        time.sleep(1)
    resume = attempt.get("resume_from")
    cli_main(["fit", "--config", str(run_dir / CONFIG), *(["--ckpt_path", resume] if resume else [])])


def keep_checkpoints(ablation: Ablation, run_dir: Path, row: dict[str, Any]) -> dict[str, Any]:
    """With ``checkpoints: none``, remove a finished run's checkpoints (earlier runs' are kept); the row then names
    none."""
    if ablation.checkpoints == "none":
        for ckpt in run_dir.rglob("*.ckpt"):
            if EARLIER not in ckpt.relative_to(run_dir).parts:
                ckpt.unlink()
        row = {**row, "checkpoint": None}
    return row


def run_one(ablation: Ablation, run: PlannedRun) -> dict[str, Any] | None:
    """Train (or continue) and evaluate ``run`` in its folder; returns its report row (also written to
    ``result.json``), or None on a DDP rank > 0. A run finished with this config and these evaluations is
    returned as it is. Raises :class:`RunFolderBusy` when another live process owns the run."""
    name, run_dir, config = run.name, run.folder, run.config
    if worker_rank() > 0:
        _worker_fit(run_dir)
        return None
    lock = run_dir / LOCK
    take_lock(lock, f"run {name} of ablation {ablation.name}", {**lock_owner(), "run": name})
    try:
        row = finished_row(run_dir, config, ablation.evaluate)
        if row is not None:
            return keep_checkpoints(ablation, run_dir, row)
        config_path, written = run_dir / CONFIG, written_config(run_dir)
        if (run_dir / RESULT).exists() or (written is not None and not same_config(written, config)):
            archive_earlier(run_dir)  # another config's or evaluation's files: kept, not continued
        config_path.write_text(config)
        resume = resume_checkpoint(run_dir)
        attempt = start_attempt(run_dir, resume)
        try:
            with _environ(**{ENV_OWNED_RUN_DIR: str(run_dir.resolve())}):
                row = train_and_evaluate(ablation, config_path, resume)
        except BaseException as err:
            interrupted = isinstance(err, KeyboardInterrupt) or (
                isinstance(err, SystemExit) and err.code == PREEMPTED_EXIT_CODE)
            error = f"exit status {err.code} (the error is in the log)" if isinstance(err, SystemExit) else \
                f"{type(err).__name__}: {err}"
            end_attempt(run_dir, attempt, "interrupted" if interrupted else "failed", None if interrupted else error)
            raise
        row = keep_checkpoints(ablation, run_dir, {"run": name, **run.grid_values, **row,
                                                   "evaluate": ablation.evaluate})
        write_json(run_dir / RESULT, row)
        end_attempt(run_dir, attempt, "done")
        return row
    finally:
        release_lock(lock)

