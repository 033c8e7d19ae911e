"""``deeplab-lightning ablate FILE``: train a grid of config overrides, evaluate each trained model with and
without multi-scale + flip and dense CRF, and compare the runs in one report (a rich table, ``report.csv``,
``report.md``, ``report.png`` and ``report.json``) that needs no wandb account.

Three ways to run the grid, each writing every run to its own folder under ``output_dir``:

- one run after another in this process (the default);
- ``--gpus 0,1,2,3 [--gpus_per_run K]``: a local queue of child processes, one per group of K GPUs
  (:mod:`deeplab_lightning.ablate.local`);
- ``--slurm``: a SLURM job array, one task per run, and a report job after it (:mod:`deeplab_lightning.ablate.slurm`).

``--run NAME`` (or ``--run_index I``) trains and evaluates one run; ``--report`` gathers the report from the
run folders at any time, listing runs that are missing, running or failed (:mod:`deeplab_lightning.ablate.state`).

The ablation file's format: :mod:`deeplab_lightning.ablate`.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from ..ablate import report, restart_all, run_ablation, states
from ..ablate.cost import estimate, estimate_lines
from ..ablate.local import LocalQueue, gpu_groups
from ..ablate.prepare import prepare
from ..ablate.run import run_one
from ..ablate.slurm import submit, write_scripts
from ..ablate.spec import Ablation, load_ablation, plan
from ..runs.folder import RunFolderBusy
from .options import CommandParser, help_text


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
    parser = CommandParser(prog="deeplab-lightning ablate", description=help_text(__doc__.split("\n\n")[0]))
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
                      f"  id=$(sbatch --parsable {shlex.quote(str(array))}) && sbatch --dependency=afterany:$id "
                      f"{shlex.quote(str(report_script))}",
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
    from .cli import main as cli_main
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
