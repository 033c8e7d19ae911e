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
import copy
import csv
import gc
import io
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import WandbLogger
from rich.console import Console
from rich.table import Table

from .callbacks import DenseCRFRefinement, MultiScaleInference, ProgressBar, Throughput
from .plots import ablation_figure

MIN_THROUGHPUT_STEPS = 50  # fewer measured training steps than this: images/s are too noisy to compare runs
METRICS = {"mIoU": "mIoU", "mIoU_ms_flip": "+MS/flip", "mIoU_crf": "+CRF", "mIoU_ms_flip_crf": "+MS/flip+CRF"}
ABLATION_KEYS = {"name", "base", "output_dir", "set", "variants", "grid", "evaluate"}


@dataclass
class Ablation:
    """A parsed ablation file."""

    name: str
    base: Path
    output_dir: Path
    set: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    ms_flip: dict[str, Any] | None = None
    crf: dict[str, Any] | None = None

    def runs(self) -> list[tuple[str, dict[str, Any]]]:
        """(run name, overrides) for every variant and combination of the grid (``base`` without either)."""
        keys = list(self.grid)
        combos = [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]
        variants = self.variants or {"": {}}
        runs = []
        for variant, settings in variants.items():
            for combo in combos:
                name = ",".join(part for part in (variant, run_name(combo) if combo else "") if part) or "base"
                runs.append((name, {**settings, **combo}))
        return runs


def _fail(path: Path, message: str) -> NoReturn:
    raise ValueError(f"Ablation file {path}: {message}")


def load_ablation(path: str | Path, output_dir: str | Path | None = None) -> Ablation:
    """Read and check an ablation file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Ablation file {path} does not exist")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict):
        _fail(path, "expected a mapping with keys " + ", ".join(sorted(ABLATION_KEYS)))
    unknown = set(spec) - ABLATION_KEYS
    if unknown:
        _fail(path, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(ABLATION_KEYS)}")
    if "base" not in spec:
        _fail(path, "'base' (the experiment YAML every run starts from) is missing")
    base = (path.parent / spec["base"]).resolve()
    if not base.is_file():
        _fail(path, f"base experiment {base} does not exist")
    variants = spec.get("variants") or {}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        _fail(path, "variants must map a name to a mapping of dotted overrides")
    grid = spec.get("grid") or {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            _fail(path, f"grid.{key} must be a non-empty list of values, got {values!r}")
    evaluate = spec.get("evaluate") or {}
    if set(evaluate) - {"ms_flip", "crf"}:
        _fail(path, f"evaluate takes ms_flip and crf, got {sorted(evaluate)}")
    name = spec.get("name") or path.stem

    def kwargs(value: Any) -> dict[str, Any] | None:
        return None if value in (None, False) else ({} if value is True else dict(value))

    return Ablation(name=name, base=base,
                    output_dir=Path(output_dir or spec.get("output_dir") or f"runs/ablations/{name}"),
                    set=dict(spec.get("set") or {}), variants=dict(variants), grid=dict(grid),
                    ms_flip=kwargs(evaluate.get("ms_flip")), crf=kwargs(evaluate.get("crf")))


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """``config[a][b][c] = value`` for ``key = "a.b.c"``, creating mappings on the way and stepping into
    ``init_args`` where a part is a ``class_path`` entry."""
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        if isinstance(node, dict) and "class_path" in node and part not in ("class_path", "init_args"):
            node = node.setdefault("init_args", {})
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if "class_path" in node and parts[-1] not in ("class_path", "init_args"):
        node = node.setdefault("init_args", {})
    node[parts[-1]] = value


def run_name(overrides: dict[str, Any]) -> str:
    """``arch=deeplabv3_resnet18,output_stride=8`` style names from the last part of each key."""

    def fmt(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return "-".join(map(str, value))
        return str(value)

    return ",".join(f"{key.rsplit('.', 1)[-1]}={fmt(value)}" for key, value in overrides.items())


def run_config(ablation: Ablation, base: dict[str, Any], name: str, overrides: dict[str, Any],
               run_dir: Path) -> dict[str, Any]:
    """The base config with the ablation's overrides, its outputs under ``run_dir`` and wandb grouping."""
    config = copy.deepcopy(base)
    for key, value in {**ablation.set, **overrides}.items():
        set_dotted(config, key, value)
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = str(run_dir)
    logger = trainer.get("logger")
    if isinstance(logger, dict) and logger.get("class_path", "").endswith("WandbLogger"):
        args = logger.setdefault("init_args", {})
        tags = [ablation.name, *name.split(",")]
        args.update(name=f"{ablation.name}/{name}", group=ablation.name, tags=[t[:64] for t in tags],
                    save_dir=str(run_dir))
    callbacks = [c for c in trainer.get("callbacks") or [] if not str(c.get("class_path")).endswith("Throughput")]
    for callback in callbacks:
        if str(callback.get("class_path")).endswith("ModelCheckpoint"):
            callback.setdefault("init_args", {})["dirpath"] = str(run_dir / "checkpoints")
    max_steps = int(trainer.get("max_steps") or 0)
    warmup = min(5, max(max_steps // 4, 0))
    callbacks.append({"class_path": "deeplab_lightning.callbacks.Throughput", "init_args": {"warmup_steps": warmup}})
    trainer["callbacks"] = callbacks
    return config


def _run_dir_and_config(ablation: Ablation, base: dict[str, Any], name: str,
                        overrides: dict[str, Any]) -> tuple[Path, str]:
    """The run's folder (created) and its config as YAML text."""
    run_dir = ablation.output_dir / name.replace("/", "_")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, yaml.safe_dump(run_config(ablation, base, name, overrides, run_dir), sort_keys=False)


def _validate(cli: Any, callbacks: list[L.Callback]) -> tuple[dict[str, float], float]:
    """Validate the trained model with ``callbacks``; returns ({stage: mIoU}, seconds)."""
    on_gpu = cli.trainer.strategy.root_device.type == "cuda"
    trainer = L.Trainer(accelerator="gpu" if on_gpu else "cpu", devices=1, precision=cli.trainer.precision,
                        logger=False, callbacks=[*callbacks, ProgressBar(leave=False)], enable_model_summary=False)
    start = time.perf_counter()
    trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    seconds = time.perf_counter() - start
    results = {stage: cli.model.evaluation_results(stage) for stage in ("val", "val/unrefined")}
    return {stage: r.mIoU for stage, r in results.items() if r is not None}, seconds


def train_and_evaluate(ablation: Ablation, config_path: Path) -> dict[str, Any]:
    """Fit one run through the command line, then evaluate its best checkpoint; returns the report row."""
    from .cli import main

    cli = main(["fit", "--config", str(config_path)])
    ckpt = cli.trainer.checkpoint_callback.best_model_path if cli.trainer.checkpoint_callback else None
    if ckpt:  # evaluate the best checkpoint, not the last weights
        cli.model.load_state_dict(torch.load(ckpt, map_location=cli.model.device, weights_only=False)["state_dict"])
    if isinstance(cli.trainer.logger, WandbLogger):
        cli.trainer.logger.experiment.finish()  # the next run starts its own wandb run
    throughput = next((c for c in cli.trainer.callbacks if isinstance(c, Throughput)), None)
    plain, seconds = _validate(cli, [])
    num_val = len(cli.datamodule.dataset(cli.datamodule.val_split))
    row: dict[str, Any] = {
        "params_M": sum(p.numel() for p in cli.model.net.parameters()) / 1e6,
        "train_img_s": throughput.img_per_s if throughput else None,
        "train_img_s_steps": cli.trainer.global_step - throughput.warmup_steps if throughput else None,
        "eval_img_s": num_val / seconds,
        "mIoU": plain["val"],
        "steps": cli.trainer.global_step,
        "checkpoint": ckpt or None,
    }
    crf = [DenseCRFRefinement(stages=["validate"], **ablation.crf)] if ablation.crf is not None else []
    if crf:
        row["mIoU_crf"] = _validate(cli, crf)[0]["val"]
    if ablation.ms_flip is not None:
        ms = [MultiScaleInference(stages=["validate"], **ablation.ms_flip)]
        results = _validate(cli, ms + crf)[0]
        row["mIoU_ms_flip"] = results["val/unrefined"] if crf else results["val"]
        if crf:
            row["mIoU_ms_flip_crf"] = results["val"]
    return row


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def report_columns(rows: list[dict[str, Any]], grid_keys: list[str]) -> list[tuple[str, str]]:
    """(field, header) of the report: run, grid values, mIoU variants present, speed, size."""
    columns = [("run", "run"), *((k, k.rsplit(".", 1)[-1]) for k in grid_keys)]
    columns += [(k, f"{h} (%)") for k, h in METRICS.items() if any(k in r for r in rows)]
    return columns + [("train_img_s", "train img/s"), ("eval_img_s", "eval img/s"), ("params_M", "params (M)")]


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key in METRICS and value is not None:
        return _fmt(100 * value)
    return _fmt(value, 1 if key.endswith("_img_s") else 2)


def write_report(rows: list[dict[str, Any]], grid_keys: list[str], out_dir: Path, title: str) -> Table:
    """Writes report.csv, report.md, report.png and report.json; returns the rich table."""
    columns = report_columns(rows, grid_keys)
    with open(out_dir / "report.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([k for k, _ in columns])
        writer.writerows([[row.get(k) for k, _ in columns] for row in rows])
    lines = [f"# {title}", "", "| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---" if k == "run" else "---:" for k, _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row, k) for k, _ in columns) + " |" for row in rows]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    (out_dir / "report.json").write_text(json.dumps(rows, indent=2, default=str))
    ablation_figure(rows, METRICS, title).savefig(out_dir / "report.png", dpi=120)
    compact = [(k, h) for k, h in columns if k not in grid_keys]  # the run name holds the grid values
    table = Table(title=title)
    longest = max((len(str(row["run"])) for row in rows), default=3)
    for key, header in compact:  # the run name is never cut: it tells the runs apart (other columns wrap)
        if key == "run":
            table.add_column(header, no_wrap=True, min_width=longest)
        else:
            table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*(_cell(row, k) for k, _ in compact))
    return table


def run_ablation(ablation: Ablation, force: bool = False, console: Console | None = None) -> list[dict[str, Any]]:
    """Train and evaluate every run (skipping finished ones unless ``force``), then write the report."""
    console = console or Console()
    base = yaml.safe_load(ablation.base.read_text())
    ablation.output_dir.mkdir(parents=True, exist_ok=True)
    runs = ablation.runs()
    rows = []
    for i, (name, overrides) in enumerate(runs, 1):
        run_dir, config = _run_dir_and_config(ablation, base, name, overrides)
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
    from .cli import main as cli_main
    from .models import create_model

    base = yaml.safe_load(ablation.base.read_text())
    for name, overrides in ablation.runs():
        run_dir, config = _run_dir_and_config(ablation, base, name, overrides)
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
