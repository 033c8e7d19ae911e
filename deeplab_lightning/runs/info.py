"""What produced a run: git commit, package versions, command line, machine."""
from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("deeplab-lightning", "torch", "torchvision", "lightning", "torchmetrics", "timm", "wandb",
            "jsonargparse", "numpy", "pydensecrf2")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def run_info() -> dict[str, Any]:
    """JSON-ready facts about this process: ``git_commit`` (None outside a checkout), ``git_dirty``,
    ``packages`` (installed versions), ``command``, ``python``, ``host``, ``slurm_job_id``, ``cuda``, ``gpus``,
    ``started``."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "packages": {name: _version(name) for name in PACKAGES},
        "command": sys.argv,
        "python": platform.python_version(),
        "host": platform.node(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
