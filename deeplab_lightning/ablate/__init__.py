"""``deeplab-lightning ablate FILE``: train a grid of config overrides one run after another, evaluate each
trained model with and without multi-scale + flip and dense CRF, and compare the runs in one report (a rich
table, ``report.csv``, ``report.md``, ``report.png`` and ``report.json``) that needs no wandb account.

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

A dotted key that reaches a ``class_path`` entry continues in its ``init_args`` (``data.batch_size`` means
``data.init_args.batch_size``). A finished run (its ``result.json`` beside an unchanged ``run.yaml``) is
not trained again: rerun the command after an interruption and it continues; ``--force`` retrains all.
``--set KEY=VALUE`` (repeatable) overrides a key in every run, after the file's ``set``.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
from typing import Any

import torch
import yaml
from rich.console import Console

from .evaluate import train_and_evaluate
from .report import METRICS, MIN_THROUGHPUT_STEPS, report_columns, write_report
from .spec import Ablation, run_dir_and_config, load_ablation, run_config, run_name, set_dotted

__all__ = ["Ablation", "load_ablation", "run_ablation", "run_config", "run_name", "set_dotted", "main",
           "report_columns", "write_report", "train_and_evaluate", "METRICS"]


def run_ablation(ablation: Ablation, force: bool = False, console: Console | None = None) -> list[dict[str, Any]]:
    """Train and evaluate every run (skipping finished ones unless ``force``), then write the report."""
    console = console or Console()
    base = yaml.safe_load(ablation.base.read_text())
    ablation.output_dir.mkdir(parents=True, exist_ok=True)
    runs = ablation.runs()
    rows = []
    for i, (name, overrides) in enumerate(runs, 1):
        run_dir, config = run_dir_and_config(ablation, base, name, overrides)
        config_path, result_path = run_dir / "run.yaml", run_dir / "result.json"
        if not force and result_path.is_file() and config_path.is_file() and config_path.read_text() == config:
            console.rule(f"[{i}/{len(runs)}] {name}: done before, reusing {result_path}")
            rows.append(json.loads(result_path.read_text()))
            continue
        console.rule(f"[{i}/{len(runs)}] {name}")
        config_path.write_text(config)
        grid_values = {k: v for k, v in overrides.items() if k in ablation.grid}
        row = {"run": name, **grid_values, **train_and_evaluate(ablation, config_path)}
        result_path.write_text(json.dumps(row, indent=2, default=str))
        rows.append(row)
        gc.collect()
    table = write_report(rows, list(ablation.grid), ablation.output_dir, f"Ablation {ablation.name}")
    console.print(table)
    short = [r["run"] for r in rows if (r.get("train_img_s_steps") or MIN_THROUGHPUT_STEPS) < MIN_THROUGHPUT_STEPS]
    if short:
        console.print(f"note: train img/s of {len(short)} run(s) is measured over fewer than {MIN_THROUGHPUT_STEPS} "
                      f"steps after warm-up: too short to compare speeds (raise trainer.max_steps)")
    console.print(f"Report: {ablation.output_dir}/report.{{csv,md,png,json}}")
    return rows


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"trainer.max_steps=20"`` -> ``("trainer.max_steps", 20)`` (the value read as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. trainer.max_steps=20), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deeplab-lightning ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="ablation YAML (see experiments/ablations/)")
    parser.add_argument("--set", type=parse_assignment, action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted config key in every run, after the file's set: (repeatable), "
                             "e.g. --set trainer.max_steps=20 --set data.batch_size=8")
    parser.add_argument("--output-dir", help="where runs and the report go (overrides the file's output_dir)")
    parser.add_argument("--force", action="store_true", help="retrain runs that finished before")
    parser.add_argument("--dry-run", action="store_true", help="write and check every run's config, train nothing")
    args = parser.parse_args(argv)
    ablation = load_ablation(args.file, args.output_dir)
    ablation.set.update(dict(args.set))
    if args.dry_run:
        return dry_run(ablation)
    run_ablation(ablation, force=args.force)
    return 0


def dry_run(ablation: Ablation) -> int:
    """Write every run's config, parse it with the command line's parser (errors name the key) and build its
    network on the meta device (errors name a model argument the architecture does not take)."""
    from ..cli import main as cli_main
    from ..models import create_model

    base = yaml.safe_load(ablation.base.read_text())
    for name, overrides in ablation.runs():
        run_dir, config = run_dir_and_config(ablation, base, name, overrides)
        path = run_dir / "run.yaml"
        path.write_text(config)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                cli_main(["fit", "--config", str(path), "--print_config"])
        except SystemExit as exit_info:
            if exit_info.code:
                raise ValueError(f"Run {name} of ablation {ablation.name}: its config {path} does not parse "
                                 f"(see the error above)") from None
        model = yaml.safe_load(printed.getvalue())["model"]
        try:
            with torch.device("meta"):
                create_model(model["arch"], 21, output_stride=model["output_stride"],
                             **(model["model_kwargs"] or {}))
        except TypeError as err:
            raise ValueError(f"Run {name} of ablation {ablation.name}: {model['arch']} cannot be built with "
                             f"model_kwargs {model['model_kwargs']} ({err})") from None
    Console(stderr=True).print(f"{len(ablation.runs())} run configs written under {ablation.output_dir} and checked")
    return 0
