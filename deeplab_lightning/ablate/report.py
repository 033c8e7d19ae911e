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

from ..evaluation.plots import ablation_figure, trimap_figure
from ..runs.folder import write_text_atomic

MIN_THROUGHPUT_STEPS = 50  # fewer measured training steps than this: images/s are too noisy to compare runs
# mIoU at the trained output stride; at the one `evaluate: {output_stride}` names; then the others, at that one.
METRICS = {"mIoU": "mIoU", "mIoU_os8": "OS8", "mIoU_os16": "OS16", "mIoU_os32": "OS32", "mIoU_ms_flip": "+MS/flip",
           "mIoU_crf": "+CRF", "mIoU_ms_flip_crf": "+MS/flip+CRF"}
# At object boundaries (single scale, and after the dense CRF): trimap mIoU at the narrowest band, Boundary IoU and
# boundary F1 (deeplab_lightning.evaluation.boundaries); summarised over seeds like the mIoU columns.
BOUNDARY_METRICS = {"trimap_mIoU": "trimap", "trimap_mIoU_crf": "trimap +CRF", "boundary_mIoU": "Boundary IoU",
                    "boundary_mIoU_crf": "Boundary IoU +CRF", "boundary_mF1": "boundary F1"}
SUMMARISED = {**METRICS, **BOUNDARY_METRICS}  # every score a row summarises over its seeds


def short_throughput_runs(rows: list[dict[str, Any]]) -> list[str]:
    """The runs whose training images/s were measured over fewer than MIN_THROUGHPUT_STEPS steps."""
    return [row["run"] for row in rows if row.get("status", "done") == "done"
            and (row.get("train_img_s_steps") or MIN_THROUGHPUT_STEPS) < MIN_THROUGHPUT_STEPS]


TEXT_COLUMNS = ("run", "status", "vs_baseline", "published", "note")  # left-aligned


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


def report_columns(rows: list[dict[str, Any]], grid_keys: list[str], baseline: str | None = None
                   ) -> list[tuple[str, str]]:
    """(field, header) of the report: row, grid values, status, seeds, the mIoU variants present (mean and 95 %
    interval), the difference to the baseline, published numbers, speed, size, cost and notes."""
    columns = [("run", "run"), *((k, k.rsplit(".", 1)[-1]) for k in grid_keys)]
    if any(r.get("status", "done") != "done" for r in rows):
        columns.append(("status", "status"))
    if any("seeds" in r for r in rows):
        columns.append(("n", "seeds"))
    columns += [(k, f"{h} (%)") for k, h in METRICS.items() if any(k in r for r in rows)]
    width = next((r["trimap_width"] for r in rows if r.get("trimap_width") is not None), None)
    columns += [(k, f"{h}{f' {width}px' if k.startswith('trimap') else ''} (%)")
                for k, h in BOUNDARY_METRICS.items() if any(k in r for r in rows)]
    if any("mIoU_delta" in r for r in rows):
        columns += [("mIoU_delta", f"Δ mIoU vs {baseline} (pp)"), ("vs_baseline", "reading")]
    if any("published" in r for r in rows):
        columns.append(("published", "published (ours - published, pp)"))
    columns += [("train_img_s", "train img/s"), ("eval_img_s", "eval img/s"), ("params_M", "params (M)")]
    columns += [(k, h) for k, h in (("train_device_h", "train device-h"), ("eval_device_h", "eval device-h"))
                if any(r.get(k) is not None for r in rows)]
    return columns + ([("note", "note")] if any(r.get("note") for r in rows) else [])


def _interval(low: float | None, high: float | None, scale: float = 100, signed: bool = False) -> str:
    if low is None or high is None:
        return ""
    number = "{:+.2f}" if signed else "{:.2f}"
    return f" [{number.format(scale * low)}, {number.format(scale * high)}]"


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key in SUMMARISED and value is not None:
        return _fmt(100 * value) + _interval(row.get(f"{key}_low"), row.get(f"{key}_high"))
    if key == "mIoU_delta" and value is not None:
        p = row.get("mIoU_p")
        return f"{100 * value:+.2f}" + _interval(row.get("mIoU_delta_low"), row.get("mIoU_delta_high"), signed=True) \
            + (f" p={p:.3f}" if p is not None else "")
    if key == "published" and value:
        return "; ".join(entry["label"] + (f" ({entry['ours_minus_published']:+.2f})"
                                           if entry["ours_minus_published"] is not None else "") for entry in value)
    if key.endswith("_device_h") and value is not None:
        return f"{value:.3g}"
    return _fmt(value, 1 if key.endswith("_img_s") else 2)


def _csv_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def cost_line(rows: list[dict[str, Any]]) -> str | None:
    """The grid's total device-hours, training and evaluation, or None when no run recorded them."""
    train = [r["train_device_h"] for r in rows if r.get("train_device_h") is not None]
    evaluation = [r["eval_device_h"] for r in rows if r.get("eval_device_h") is not None]
    if not train and not evaluation:
        return None
    return (f"Cost: {sum(train):.3g} device-hours training + {sum(evaluation):.3g} evaluating "
            f"= {sum(train) + sum(evaluation):.3g} device-hours (devices x wall time, every finished run)")


def write_report(rows: list[dict[str, Any]], grid_keys: list[str], out_dir: Path, title: str,
                 baseline: str | None = None) -> Table:
    """Writes report.csv, report.md, report.png and report.json (each atomically: several processes may report
    one ablation); returns the rich table. A row whose ``status`` is not ``done`` has no measurements; a row whose
    numbers may not compare (:func:`comparison_notes`) gets a ``note``, and its bars are hatched in the figure."""
    notes = comparison_notes(rows)
    rows = [{**row, "note": "; ".join(notes[row["run"]])} if row["run"] in notes else row for row in rows]
    columns = report_columns(rows, grid_keys, baseline)
    keys = [k for k, _ in columns]
    keys += sorted({k for row in rows for k in row if k not in keys and k not in ("evaluate", "checkpoint")})
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(keys)
    writer.writerows([[_csv_value(row.get(k)) for k in keys] for row in rows])
    write_text_atomic(out_dir / "report.csv", text.getvalue())
    lines = [f"# {title}", "", "| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---" if k in TEXT_COLUMNS else "---:" for k, _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row, k) for k, _ in columns) + " |" for row in rows]
    intervals = {r.get(f"{k}_interval") for r in rows for k in METRICS}
    if "t over seeds" in intervals:
        lines += ["", "mIoU: mean over the row's seeds [95 % interval of the mean, Student t]."]
    if "bootstrap over images" in intervals:
        lines += ["", "mIoU of a row with one run: [95 % percentile bootstrap interval over images (2000 resamples of "
                      "whole images, from the run's per-image confusion matrices)]: how much the score depends on "
                      "which images the split holds, not on training noise."]
    if baseline is not None:
        lines += ["", f"Δ mIoU vs {baseline}: the paired difference over the seeds both rows ran [95 % interval] and "
                      f"the two-sided paired t-test's p; an interval that contains 0 is not distinguishable from the "
                      f"baseline with that many seeds (it is not evidence that the rows are equal)."]
    short = short_throughput_runs(rows)
    if short:
        lines += ["", f"Train img/s of {', '.join(short)}: measured over fewer than {MIN_THROUGHPUT_STEPS} steps after "
                      f"warm-up, too noisy to compare speeds (raise trainer.max_steps)."]
    cost = cost_line(rows)
    if cost:
        lines += ["", cost + "."]
    changes = [(row["run"], row["image_changes"]) for row in rows if row.get("image_changes")]
    if changes:
        lines += ["", f"Images each row changes most relative to {baseline} (per-image mIoU, points):", ""]
        lines += [f"- {run}: improves " + (", ".join(f"{i} ({d:+.1f})" for i, d in change["improves"]) or "none")
                  + "; breaks " + (", ".join(f"{i} ({d:+.1f})" for i, d in change["breaks"]) or "none")
                  for run, change in changes]
    write_text_atomic(out_dir / "report.md", "\n".join(lines) + "\n")
    write_text_atomic(out_dir / "report.json", json.dumps(rows, indent=2, default=str))
    png = out_dir / f".report.{os.getpid()}.png"
    suspect = [run for run, found in notes.items() if any("img/s" not in note for note in found)]
    ablation_figure(rows, METRICS, title, short, suspect).savefig(png, dpi=120)
    os.replace(png, out_dir / "report.png")
    if any(row.get("trimap_curve") for row in rows):
        trimap_figure(rows, f"{title}: mIoU near boundaries").savefig(png, dpi=120)
        os.replace(png, out_dir / "report_trimap.png")
    compact = [(k, h) for k, h in columns if k not in grid_keys]  # the run name holds the grid values
    table = Table(title=title)
    longest = max((len(str(row["run"])) for row in rows), default=3)
    for key, header in compact:  # the run name is never cut: it tells the runs apart (other columns wrap)
        if key == "run":
            table.add_column(header, no_wrap=True, min_width=longest)
        elif key in TEXT_COLUMNS:
            table.add_column(header, no_wrap=key == "status")
        else:
            table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*(_cell(row, k) for k, _ in compact))
    return table


def write_runs(run_rows: list[dict[str, Any]], out_dir: Path) -> None:
    """``runs.csv`` and ``runs.json``: one line per run (row, seed, status and every measurement), atomically."""
    keys = list(dict.fromkeys(k for row in run_rows for k in row if k != "evaluate"))
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(keys)
    writer.writerows([[_csv_value(row.get(k)) for k in keys] for row in run_rows])
    write_text_atomic(out_dir / "runs.csv", text.getvalue())
    write_text_atomic(out_dir / "runs.json", json.dumps(run_rows, indent=2, default=str))
