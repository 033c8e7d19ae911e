"""The ablation's summary run in wandb (job type ``ablation``, in the runs' group): the report table with each
row's statistics, its difference to the baseline and the published numbers, and the report figure, so that the
V1-V3+ comparison in wandb carries its error bars. Written by ``--report`` and at the end of a grid (offline
unless the user logged in, like every run); one wandb run per output folder, updated by each report."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from .spec import Ablation


def wandb_settings(ablation: Ablation) -> dict[str, Any] | None:
    """The base experiment's WandbLogger arguments, or None when its runs do not log to wandb."""
    logger = ((yaml.safe_load(ablation.base.read_text()) or {}).get("trainer") or {}).get("logger")
    loggers = logger if isinstance(logger, list) else [logger]
    found = [lg for lg in loggers if isinstance(lg, dict) and str(lg.get("class_path", "")).endswith("WandbLogger")]
    return dict(found[0].get("init_args") or {}) if found else None


def summary_id(ablation: Ablation) -> str:
    """The summary run's id: one per ablation and output folder, so that a later report updates it."""
    return "ablation-" + hashlib.sha256(f"{ablation.name}\0{ablation.output_dir}".encode()).hexdigest()[:16]


def log_summary(ablation: Ablation, rows: list[dict[str, Any]], figure: Path | None = None) -> str | None:
    """Log ``rows`` (the report's) as a table, and ``figure``, to the ablation's summary run; returns its id, or
    None when the base experiment has no wandb logger or wandb is disabled."""
    settings = wandb_settings(ablation)
    if settings is None:
        return None
    import wandb

    from ..commands.cli import default_wandb_mode

    default_wandb_mode()
    columns = list(dict.fromkeys(k for row in rows for k, v in row.items() if k not in ("evaluate", "checkpoint")))
    data = [[_cell(row.get(k)) for k in columns] for row in rows]
    run = wandb.init(project=settings.get("project"), entity=settings.get("entity"), group=ablation.name,
                     job_type="ablation", name=f"{ablation.name} (report)", id=summary_id(ablation), resume="allow",
                     dir=str(ablation.output_dir), tags=[ablation.name, "report"], reinit="finish_previous",
                     config={"ablation": ablation.name, "baseline": ablation.baseline, "seeds": ablation.seeds,
                             "evaluate": ablation.evaluate})
    if run is None or getattr(run, "disabled", False):
        return None
    logged: dict[str, Any] = {"report": wandb.Table(columns=columns, data=data)}
    if figure is not None and figure.is_file():
        logged["report_figure"] = wandb.Image(str(figure))
    run.log(logged)
    run.summary.update({f"{row['run']}/mIoU": row.get("mIoU") for row in rows})
    run_id = run.id
    run.finish()
    return run_id


def _cell(value: Any) -> Any:
    """A table cell wandb takes: numbers and text as they are, lists and mappings as JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, default=str)
