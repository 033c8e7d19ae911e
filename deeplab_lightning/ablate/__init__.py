"""Ablation grids: a file of config overrides planned into runs (:mod:`.spec`), each trained and evaluated in its own
folder (:mod:`.run`, :mod:`.evaluate`), their state read back (:mod:`.state`) and compared in one report with
statistics over seeds (:mod:`.evidence`, :mod:`.report`). The command is :mod:`deeplab_lightning.commands.ablate`.

An ablation file (YAML; paths relative to it)::

    name: toy_decoder_os             # wandb group and tag of every run; default: the file name
    base: ../quickstart.yaml          # the experiment every run starts from
    output_dir: runs/ablations/toy    # default: runs/ablations/<name>
    set:                              # overrides applied to every run (dotted config keys)
      trainer.max_steps: 700
    variants:                         # optional named override sets, each crossed with the grid
      v3: {model.arch: deeplabv3_resnet18, model.model_kwargs: {aspp_channels: 128}}
      v3plus: {model.arch: deeplabv3plus_resnet18}
    grid:                             # the cartesian product of these values, one run each
      model.arch: [deeplabv3_resnet18, deeplabv3plus_resnet18]
      model.output_stride: [8, 16]
      model.model_kwargs.image_pooling: [true, false]
    evaluate:                         # extra evaluations of each trained model (omit or null: skip)
      ms_flip: {scales: [0.75, 1.0, 1.25], flip: true}   # MultiScaleInference arguments
      crf: {bi_xy_std: 20, bi_rgb_std: 10}               # DenseCRFRefinement arguments
    checkpoints: last                 # all (default: best.ckpt and last.ckpt), last, or none once evaluated

A dotted key that reaches a ``class_path`` entry continues in its ``init_args`` (``data.batch_size`` means
``data.init_args.batch_size``). A finished run (its ``result.json`` beside an unchanged ``run.yaml`` and
``evaluate``) is not trained again, and an interrupted one continues from its own checkpoint in its own
folder, whichever way the grid is run again; ``--force`` retrains all (earlier files are kept in each run's
``earlier/``). ``--set KEY=VALUE`` (repeatable) overrides a key in every run, after the file's ``set``.
"""
from __future__ import annotations

import gc
from typing import Any

from rich.console import Console

from ..runs.folder import release_lock, take_lock
from .evaluate import train_and_evaluate
from .analysis import write_analysis
from .evidence import row_results
from .report import (METRICS, MIN_THROUGHPUT_STEPS, cost_line, report_columns, short_throughput_runs, write_report,
                     write_runs)
from .run import run_one
from .spec import Ablation, PlannedRun, load_ablation, plan, run_config, run_name, set_dotted
from .state import LOCK, RunState, archive_earlier, read_state
from .summary import log_summary

__all__ = ["Ablation", "load_ablation", "run_ablation", "run_config", "run_name", "set_dotted",
           "report_columns", "write_report", "train_and_evaluate", "METRICS", "report", "plan", "PlannedRun", "states",
           "restart_all"]


def states(ablation: Ablation, runs: list[PlannedRun] | None = None) -> list[RunState]:
    """The state of every run of ``ablation`` (or of ``runs``), read from its folder."""
    return [read_state(run.name, run.folder, run.config, ablation.evaluate) for run in runs or plan(ablation)]


def report(ablation: Ablation, console: Console | None = None) -> tuple[list[dict[str, Any]], int]:
    """Write the report from the run folders as they are now: one line per row (its seeds' statistics, the
    difference to the baseline, published numbers, cost) in ``report.*`` and one per run in ``runs.csv`` /
    ``runs.json``; print it and every run that is not done (why, and its log). Returns the report rows and the
    exit status: 0 when every run is done, else 1."""
    console = console or Console()
    runs = plan(ablation)
    found = states(ablation, runs)
    run_rows = [{**s.row, "row": run.row, "seed": run.seed, "status": "done"} if s.status == "done" else
                {"run": s.name, "row": run.row, "seed": run.seed, **run.grid_values, "status": s.status}
                for s, run in zip(found, runs)]
    rows = row_results(ablation, runs, run_rows)
    ablation.output_dir.mkdir(parents=True, exist_ok=True)
    write_runs(run_rows, ablation.output_dir)
    write_analysis(runs, run_rows, ablation.output_dir)
    console.print(write_report(rows, list(ablation.grid), ablation.output_dir, f"Ablation {ablation.name}",
                               ablation.baseline))
    short = short_throughput_runs(rows)
    if short:
        console.print(f"note: train img/s of {len(short)} row(s) is measured over fewer than {MIN_THROUGHPUT_STEPS} "
                      f"steps after warm-up: too short to compare speeds (raise trainer.max_steps)")
    cost = cost_line(run_rows)
    if cost:
        console.print(cost, highlight=False)
    done = any(s.status == "done" for s in found)  # nothing measured yet: no wandb summary run
    summary = log_summary(ablation, rows, ablation.output_dir / "report.png") if done else None
    if summary is not None:
        console.print(f"wandb: the report table is in the summary run {summary} (job type ablation, group "
                      f"{ablation.name})", highlight=False, soft_wrap=True)
    missing = [s for s in found if s.status != "done"]
    for s in missing:
        step = f" at step {s.step}/{s.max_steps}" if s.status in ("running", "interrupted") and s.max_steps else ""
        console.print(f"{s.status}: {s.name}{step}" + (f": {s.detail}" if s.detail else "")
                      + (f" (log: {s.log})" if s.log else ""), highlight=False, soft_wrap=True)
    console.print(f"Report: {ablation.output_dir}/report.{{csv,md,png,json}}, runs.{{csv,json}}, analysis/"
                  + (f" ({len(missing)} of {len(found)} runs not done)" if missing else ""))
    return rows, int(bool(missing))


def run_ablation(ablation: Ablation, force: bool = False, console: Console | None = None) -> list[dict[str, Any]]:
    """Train and evaluate every run in this process, one after another (continuing interrupted runs, skipping
    finished ones unless ``force``), then write the report; returns its rows."""
    console = console or Console()
    if force:
        restart_all(ablation)
    runs = plan(ablation)
    for i, (run, state) in enumerate(zip(runs, states(ablation, runs)), 1):
        if state.status == "done":
            console.rule(f"[{i}/{len(runs)}] {run.name}: done before, reusing its result")
            run_one(ablation, run)  # only applies the file's checkpoints: setting, under the run's lock
            continue
        console.rule(f"[{i}/{len(runs)}] {run.name}" + ("" if state.status == "not started" else f" ({state.status})"))
        run_one(ablation, run)
        gc.collect()  # the finished run's model, data and trainer before the next
    return report(ablation, console)[0]


def restart_all(ablation: Ablation) -> None:
    """``--force``: move every run's files into its ``earlier/N`` so that each trains anew."""
    for run in plan(ablation):
        if run.folder.is_dir():
            take_lock(run.folder / LOCK, f"run {run.name} of ablation {ablation.name}")
            try:
                archive_earlier(run.folder)
            finally:
                release_lock(run.folder / LOCK)
