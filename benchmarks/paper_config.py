"""The paper experiment configs as the benchmark scripts run them."""
from __future__ import annotations

from pathlib import Path

import yaml

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def without_logger(name: str, folder: Path) -> Path:
    """A copy of ``experiments/<name>`` in ``folder`` without its wandb logger (wandb need not be installed
    where a benchmark runs)."""
    settings = yaml.safe_load((EXPERIMENTS / name).read_text())
    settings["trainer"].pop("logger", None)
    copy = Path(folder) / name
    copy.write_text(yaml.safe_dump(settings))
    return copy
