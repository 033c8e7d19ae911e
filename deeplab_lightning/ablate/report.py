"""The ablation report: a rich table and report.csv, report.md, report.json and report.png."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from rich.table import Table

from ..plots import ablation_figure
from ..run_folder import write_text_atomic

MIN_THROUGHPUT_STEPS = 50  # fewer measured training steps than this: images/s are too noisy to compare runs
# mIoU at the trained output stride; at the one `evaluate: {output_stride}` names; then the others, at that one.
METRICS = {"mIoU": "mIoU", "mIoU_os8": "OS8", "mIoU_os16": "OS16", "mIoU_os32": "OS32", "mIoU_ms_flip": "+MS/flip",
           "mIoU_crf": "+CRF", "mIoU_ms_flip_crf": "+MS/flip+CRF"}


def short_throughput_runs(rows: list[dict[str, Any]]) -> list[str]:
    """The runs whose training images/s were measured over fewer than MIN_THROUGHPUT_STEPS steps."""
    return [row["run"] for row in rows if row.get("status", "done") == "done"
            and (row.get("train_img_s_steps") or MIN_THROUGHPUT_STEPS) < MIN_THROUGHPUT_STEPS]


def comparison_notes(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Why a done run's numbers may not compare with the others': its network predicts one class everywhere, its
    metrics equal another run's to the last digit (runs that differ by design: did the setting take effect?), it
    trained fewer steps than the others, or its training images/s were measured over too few steps."""
    done = [row for row in rows if row.get("status", "done") == "done"]
    notes: dict[str, list[str]] = {row["run"]: [] for row in done}
    most_steps = max((row.get("steps") or 0 for row in done), default=0)
    by_metrics: dict[tuple, str] = {}
    for row in done:
        if row.get("predicted_classes") is not None and row["predicted_classes"] <= 1:
            notes[row["run"]].append("predicts one class everywhere")
        measured = tuple(row.get(key) for key in METRICS)
        if any(value is not None for value in measured):
            if measured in by_metrics:
                other = by_metrics[measured]
                notes[row["run"]].append(f"same metrics as {other}: did its setting take effect?")
                notes[other].append(f"same metrics as {row['run']}: did its setting take effect?")
            by_metrics.setdefault(measured, row["run"])
        if (row.get("steps") or 0) < most_steps:
            notes[row["run"]].append(f"trained {row.get('steps')} of the others' {most_steps} steps")
    for run in short_throughput_runs(rows):
        notes[run].append(f"train img/s over < {MIN_THROUGHPUT_STEPS} steps")
    return {run: found for run, found in notes.items() if found}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def report_columns(rows: list[dict[str, Any]], grid_keys: list[str]) -> list[tuple[str, str]]:
    """(field, header) of the report: run, grid values, mIoU variants present, speed, size."""
    columns = [("run", "run"), *((k, k.rsplit(".", 1)[-1]) for k in grid_keys)]
    if any(r.get("status", "done") != "done" for r in rows):
        columns.append(("status", "status"))
    columns += [(k, f"{h} (%)") for k, h in METRICS.items() if any(k in r for r in rows)]
    columns += [("train_img_s", "train img/s"), ("eval_img_s", "eval img/s"), ("params_M", "params (M)")]
    return columns + ([("note", "note")] if any(r.get("note") for r in rows) else [])


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key in METRICS and value is not None:
        return _fmt(100 * value)
    return _fmt(value, 1 if key.endswith("_img_s") else 2)


def write_report(rows: list[dict[str, Any]], grid_keys: list[str], out_dir: Path, title: str) -> Table:
    """Writes report.csv, report.md, report.png and report.json (each atomically: several processes may report
    one ablation); returns the rich table. A row whose ``status`` is not ``done`` has no measurements; a row whose
    numbers may not compare (:func:`comparison_notes`) gets a ``note``, and its bars are hatched in the figure."""
    notes = comparison_notes(rows)
    rows = [{**row, "note": "; ".join(notes[row["run"]])} if row["run"] in notes else row for row in rows]
    columns = report_columns(rows, grid_keys)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow([k for k, _ in columns])
    writer.writerows([[row.get(k) for k, _ in columns] for row in rows])
    write_text_atomic(out_dir / "report.csv", text.getvalue())
    lines = [f"# {title}", "", "| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---" if k in ("run", "note") else "---:" for k, _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row, k) for k, _ in columns) + " |" for row in rows]
    short = short_throughput_runs(rows)
    if short:
        lines += ["", f"Train img/s of {', '.join(short)}: measured over fewer than {MIN_THROUGHPUT_STEPS} steps after "
                      f"warm-up, too noisy to compare speeds (raise trainer.max_steps)."]
    write_text_atomic(out_dir / "report.md", "\n".join(lines) + "\n")
    write_text_atomic(out_dir / "report.json", json.dumps(rows, indent=2, default=str))
    png = out_dir / f".report.{os.getpid()}.png"
    suspect = [run for run, found in notes.items() if any("img/s" not in note for note in found)]
    ablation_figure(rows, METRICS, title, short, suspect).savefig(png, dpi=120)
    os.replace(png, out_dir / "report.png")
    compact = [(k, h) for k, h in columns if k not in grid_keys]  # the run name holds the grid values
    table = Table(title=title)
    longest = max((len(str(row["run"])) for row in rows), default=3)
    for key, header in compact:  # the run name is never cut: it tells the runs apart (other columns wrap)
        if key == "run":
            table.add_column(header, no_wrap=True, min_width=longest)
        elif key in ("status", "note"):
            table.add_column(header, no_wrap=key == "status")
        else:
            table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*(_cell(row, k) for k, _ in compact))
    return table
