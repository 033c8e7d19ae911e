"""``ablate FILE --slurm``: the grid as a SLURM job array (one task per run) and a report job that runs after
the array ends, whatever its tasks' outcomes (``--dependency=afterany``).

Each task runs ``deeplab-lightning ablate FILE --run_index $SLURM_ARRAY_TASK_ID`` under ``srun`` (one task per
GPU of the run, so that Lightning runs DDP from SLURM's variables). ``--signal=USR1@120`` lets Lightning save
``hpc_ckpt_N.ckpt`` and requeue the task (``--requeue``) before its time limit or a pre-emption; the requeued
task continues the run in the same folder from its newest checkpoint. Logs go to ``<output_dir>/slurm/``.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from rich.console import Console

from ..runs.folder import unused_path
from .spec import Ablation
from .state import ENV_LOG


def _header(options: dict[str, object]) -> list[str]:
    """``#SBATCH --key=value`` lines; a value with spaces (a path) in double quotes, which sbatch reads."""
    return [f'#SBATCH --{key}="{value}"' if any(c.isspace() for c in str(value)) else f"#SBATCH --{key}={value}"
            for key, value in options.items() if value is not None]


def write_scripts(ablation: Ablation, command: list[str], num_runs: int, *, partition: str | None = None,
                  time: str | None = None, max_parallel: int | None = None, gpus_per_run: int = 1,
                  cpus_per_task: int = 1, mem: str | None = None) -> tuple[Path, Path]:
    """Write ``<output_dir>/slurm/array.sbatch`` and ``report.sbatch`` (numbered when earlier ones exist);
    ``command`` is the ablate command every task runs, without ``--run_index``."""
    folder = (ablation.output_dir / "slurm").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    job = f"ablate-{ablation.name}"
    array = f"0-{num_runs - 1}" + (f"%{max_parallel}" if max_parallel else "")
    common = {"partition": partition, "chdir": os.getcwd()}
    array_options = {"job-name": job, "array": array, "nodes": 1, "ntasks-per-node": max(gpus_per_run, 1),
                     "gres": f"gpu:{gpus_per_run}" if gpus_per_run else None, "cpus-per-task": cpus_per_task,
                     "mem": mem, "time": time, "output": folder / "%A_%a.log", "open-mode": "append", **common}
    run = shlex.join([*command, "--run_index"])
    array_text = "\n".join([
        "#!/bin/bash", f"# Ablation {ablation.name}: {num_runs} runs, one array task each (deeplab-lightning ablate "
        "--slurm).", *_header(array_options), "#SBATCH --requeue", "#SBATCH --signal=USR1@120",
        "# A task requeued by Lightning (USR1, 120 s before the time limit) or pre-empted continues its run.",
        "set -euo pipefail", f'export {ENV_LOG}="{folder}/${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.log"',
        "# one CPU thread per allotted CPU (PyTorch would start one per core of the node: several tasks share it)",
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"',
        f'srun {run} "$SLURM_ARRAY_TASK_ID"', ""])
    report_options = {"job-name": f"{job}-report", "ntasks": 1, "cpus-per-task": 1, "time": "00:30:00",
                      "output": folder / "report_%j.log", **common}
    report_text = "\n".join([
        "#!/bin/bash", f"# The report of ablation {ablation.name}, after its array ends (submitted with "
        "--dependency=afterany:<array job>).", *_header(report_options), "set -euo pipefail",
        f"{shlex.join([*command, '--report'])}", ""])
    array_path = unused_path(folder / "array.sbatch")
    report_path = unused_path(folder / "report.sbatch")
    array_path.write_text(array_text)
    report_path.write_text(report_text)
    return array_path, report_path


class SubmissionFailed(OSError):
    """SLURM refused or could not take a job: no ``sbatch`` here, or sbatch's own error (a partition, a limit). An
    ``OSError`` the package raises: the command reports it in one line."""


def sbatch(*args: str) -> str:
    """Submit with ``sbatch --parsable``; returns the job id (errors carry sbatch's message)."""
    try:
        out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SubmissionFailed("sbatch is not installed here: run on a SLURM login node, or pass --no_submit to "
                               "only write the scripts") from None
    if out.returncode != 0:
        raise SubmissionFailed(f"sbatch {' '.join(args)} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip().split(";")[0]


def submit(array_path: Path, report_path: Path, report_command: list[str], console: Console) -> tuple[str, str]:
    """Submit the array, then the report job after it; print the job ids and how to follow them."""
    array_id = sbatch(str(array_path))
    report_id = sbatch(f"--dependency=afterany:{array_id}", str(report_path))
    logs = array_path.parent
    console.print(f"Submitted array job {array_id} ({array_path}) and report job {report_id} (after the array).\n"
                  f"  watch:   squeue -j {array_id},{report_id}\n"
                  f"  logs:    {logs}/{array_id}_<task>.log\n"
                  f"  report:  {shlex.join(report_command)} (any time; the report job writes "
                  f"{report_path.parent.parent}/report.md when the array ends)", highlight=False, soft_wrap=True)
    return array_id, report_id
