"""``deeplab-lightning ablate FILE``: train a grid of config overrides, evaluate each trained model with and
without multi-scale + flip and dense CRF, and compare the runs in one report (a rich table, ``report.csv``,
``report.md``, ``report.png`` and ``report.json``) that needs no wandb account.

Three ways to run the grid, each writing every run to its own folder under ``output_dir``:

- one run after another in this process (the default);
- ``--gpus 0,1,2,3 [--gpus_per_run K]``: a local queue of child processes, one per group of K GPUs
  (:mod:`.local`);
- ``--slurm``: a SLURM job array, one task per run, and a report job after it (:mod:`.slurm`).

``--run NAME`` (or ``--run_index I``) trains and evaluates one run; ``--report`` gathers the report from the
run folders at any time, listing runs that are missing, running or failed (:mod:`.state`).

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

import argparse
import contextlib
import gc
import io
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from ..console import help_text
from ..run_folder import RunFolderBusy, release_lock, take_lock
from .evaluate import train_and_evaluate
from .local import LocalQueue, gpu_groups
from .prepare import prepare
from .analysis import write_analysis
from .cost import estimate, estimate_lines
from .evidence import row_results
from .report import (METRICS, MIN_THROUGHPUT_STEPS, cost_line, report_columns, short_throughput_runs, write_report,
                     write_runs)
from .run import run_one
from .slurm import submit, write_scripts
from .spec import Ablation, PlannedRun, load_ablation, plan, run_config, run_name, set_dotted
from .state import LOCK, RunState, archive_earlier, read_state
from .summary import log_summary

__all__ = ["Ablation", "load_ablation", "run_ablation", "run_config", "run_name", "set_dotted", "main",
           "report_columns", "write_report", "train_and_evaluate", "METRICS", "report", "plan", "PlannedRun", "states"]


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
    summary = log_summary(ablation, rows, ablation.output_dir / "report.png")
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


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"trainer.max_steps=20"`` -> ``("trainer.max_steps", 20)`` (the value read as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. trainer.max_steps=20), got {text!r}")
    if not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r} gives {key.strip()} no value; write {key.strip()}=null to set it "
                                         f"to null")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"the value of {text!r} is not valid YAML ({err})") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deeplab-lightning ablate", description=help_text(__doc__.split("\n\n")[0]))
    parser.add_argument("file", help="ablation YAML (see experiments/ablations/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted config key in every run, after the file's set: (repeatable), "
                             "e.g. --set trainer.max_steps=20 --set data.batch_size=8")
    parser.add_argument("--output_dir", help="where runs and the report go (overrides the file's output_dir)")
    parser.add_argument("--force", action="store_true", help="retrain every run (earlier files kept in earlier/)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry_run", action="store_true", help="write and check every run's config and estimate the "
                      "grid's device-hours; train nothing")
    mode.add_argument("--gpus", metavar="LIST", help="run the grid as a local queue, one run per group of "
                      "--gpus_per_run GPUs at a time, e.g. --gpus 0,1,2,3")
    mode.add_argument("--slurm", action="store_true", help="submit the grid as a SLURM job array and a report job")
    mode.add_argument("--run", metavar="NAME", help="train and evaluate the run of this name only")
    mode.add_argument("--run_index", type=int, metavar="I", help="train and evaluate run I (from 0) only")
    mode.add_argument("--report", action="store_true", help="write the report from the run folders as they are")
    parser.add_argument("--no_estimate", action="store_true", help="with --dry_run or --slurm: no cost estimate "
                        "(it builds and times each distinct network)")
    parser.add_argument("--gpus_per_run", type=int, metavar="K",
                        help="GPUs of each run with --gpus or --slurm (DDP inside the run when K > 1); default 1, "
                             "and with --slurm none when the runs train on the CPU (trainer.accelerator: cpu)")
    slurm = parser.add_argument_group("SLURM (with --slurm)")
    slurm.add_argument("--partition", help="the partition of every job")
    slurm.add_argument("--time", help="time limit of each run's task, e.g. 24:00:00 (it is requeued before it)")
    slurm.add_argument("--max_parallel", type=int, metavar="N", help="at most N runs at once (%%N of --array)")
    slurm.add_argument("--cpus_per_task", type=int, help="CPUs of each task (default: the data loader's "
                       "num_workers + 1)")
    slurm.add_argument("--mem", help="memory of each task, e.g. 32G (default: 6G + 2G per data-loader worker, per "
                       "GPU of the run)")
    slurm.add_argument("--no_submit", action="store_true", help="only write the scripts")
    return parser


HYPHENATED = ("--output-dir", "--dry-run", "--no-estimate", "--gpus-per-run", "--run-index", "--max-parallel", "--cpus-per-task",
              "--no-submit")


def underscored(argv: list[str]) -> list[str]:
    """Options spelt with underscores, as every other subcommand spells them (the hyphenated spellings of earlier
    versions, ``--dry-run``, are still read)."""
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        out.append("--" + name[2:].replace("-", "_") + sep + value if name in HYPHENATED else arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(underscored(sys.argv[1:] if argv is None else argv))
    try:
        assignments = [parse_assignment(text) for text in args.set]
    except argparse.ArgumentTypeError as err:
        _parser().error(f"--set: {err}")
    ablation = load_ablation(args.file, args.output_dir)
    in_grid = sorted({key for key, _ in assignments} & set(ablation.grid))
    if in_grid:
        _parser().error(f"--set {', '.join(in_grid)}: a grid key of {args.file} (its values are the grid's); change "
                        f"the grid in the file instead")
    ablation.set.update(dict(assignments))
    console = Console() if sys.stdout.isatty() else Console(width=200)  # a log file's table: headers whole
    if args.dry_run:
        return dry_run(ablation, not args.no_estimate)
    if args.report:
        return report(ablation, console)[1]
    if args.run is not None or args.run_index is not None:
        return _run_single(ablation, args.run, args.run_index, console)
    try:
        groups = gpu_groups(args.gpus, args.gpus_per_run or 1) if args.gpus is not None else []
    except ValueError as err:
        _parser().error(str(err))
    if args.force:
        restart_all(ablation)
    prepare(ablation, console)
    command = [sys.executable, "-m", "deeplab_lightning", "ablate", str(Path(args.file).absolute()),
               "--output_dir", str(ablation.output_dir), *(f"--set={text}" for text in args.set)]
    if args.slurm:
        return _slurm(ablation, args, command, console)
    if groups:
        queue = LocalQueue(states(ablation), groups, command, console)
        status = queue.run()
        return status if status > 1 else max(status, report(ablation, console)[1])
    rows = run_ablation(ablation, console=console)
    return int(any(row["status"] != "done" for row in rows))  # 1 while the report lists runs not done


def _run_single(ablation: Ablation, name: str | None, index: int | None, console: Console) -> int:
    runs = plan(ablation)
    names = [r.name for r in runs]
    if index is not None and not 0 <= index < len(runs):
        raise ValueError(f"--run_index {index}: ablation {ablation.name} has runs 0..{len(runs) - 1}")
    if name is not None and name not in names:
        raise ValueError(f"--run {name!r}: ablation {ablation.name} has no such run; its runs: {', '.join(names)}")
    run = runs[index] if index is not None else runs[names.index(name)]
    try:
        row = run_one(ablation, run)
    except RunFolderBusy as err:
        console.print(f"error: {err}", highlight=False, soft_wrap=True)
        return 1
    if row is not None:
        console.print(f"{run.name}: done, mIoU {100 * row['mIoU']:.2f} ({run.folder / 'result.json'})", highlight=False)
    return 0


def _slurm(ablation: Ablation, args: argparse.Namespace, command: list[str], console: Console) -> int:
    runs = plan(ablation)
    resources = task_resources([yaml.safe_load(run.config) for run in runs], args.gpus_per_run, args.cpus_per_task,
                               args.mem)
    array, report_script = write_scripts(ablation, command, len(runs), partition=args.partition, time=args.time,
                                         max_parallel=args.max_parallel, **resources)
    if args.no_submit:
        console.print(f"Wrote {array} ({len(runs)} tasks) and {report_script}. Submit them with:\n"
                      f"  id=$(sbatch --parsable {array}) && sbatch --dependency=afterany:$id {report_script}",
                      highlight=False, soft_wrap=True)
        return 0
    submit(array, report_script, [*command, "--report"], console)
    if not args.no_estimate:
        for line in estimate_lines(estimate(runs)):
            console.print(line, highlight=False)
    return 0


def task_resources(configs: list[dict[str, Any]], gpus: int | None, cpus: int | None,
                   mem: str | None) -> dict[str, Any]:
    """What each SLURM task asks for, unless the options set it: a GPU per run unless every run trains on the
    CPU (``trainer.accelerator: cpu``); the data loader's ``num_workers`` + 1 CPUs; 6 GB + 2 GB per worker of
    host memory per GPU (an estimate: the process, the CUDA context and the workers' decoded batches), for the
    largest run of the grid."""
    workers = max(int(((c.get("data") or {}).get("init_args") or {}).get("num_workers") or 0) for c in configs)
    if gpus is None:
        on_cpu = all(str((c.get("trainer") or {}).get("accelerator")).lower() == "cpu" for c in configs)
        gpus = 0 if on_cpu else 1
    return {"gpus_per_run": gpus, "cpus_per_task": cpus or workers + 1,
            "mem": mem or f"{(6 + 2 * workers) * max(gpus, 1)}G"}


def dry_run(ablation: Ablation, with_estimate: bool = True) -> int:
    """Write every run's config, parse it with the command line's parser (errors name the key), build its
    network on the meta device (errors name a model argument the architecture does not take) and estimate the
    grid's training device-hours (:mod:`.cost`)."""
    from ..cli import main as cli_main
    from ..models import create_model

    runs = plan(ablation)
    for run in runs:
        run.folder.mkdir(parents=True, exist_ok=True)
        path = run.folder / "run.yaml"
        path.write_text(run.config)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                cli_main(["fit", "--config", str(path), "--print_config"])
        except SystemExit as exit_info:
            if exit_info.code:
                raise ValueError(f"Run {run.name} of ablation {ablation.name}: its config {path} does not parse "
                                 f"(see the error above)") from None
        model = yaml.safe_load(printed.getvalue())["model"]
        try:
            with torch.device("meta"):
                create_model(model["arch"], 21, output_stride=model["output_stride"],
                             **(model["model_kwargs"] or {}))
        except TypeError as err:
            raise ValueError(f"Run {run.name} of ablation {ablation.name}: {model['arch']} cannot be built with "
                             f"model_kwargs {model['model_kwargs']} ({err})") from None
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    console.print(f"{len(runs)} run configs written under {ablation.output_dir} and checked:")
    for run in runs:
        console.print(f"  {run.folder / 'run.yaml'}")
    if with_estimate:
        for line in estimate_lines(estimate(runs)):
            console.print(line)
    return 0
