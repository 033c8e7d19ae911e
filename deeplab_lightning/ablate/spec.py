"""Ablation files: reading and checking them, the grid of runs, and each run's config (the base experiment with
the overrides, its outputs in the run's folder)."""
from __future__ import annotations

import copy
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

ABLATION_KEYS = {"name", "base", "output_dir", "set", "variants", "grid", "evaluate", "checkpoints", "seeds",
                 "baseline", "published"}
SEED_KEY = "seed_everything"  # the run's seed: weights, data order and augmentation are functions of it
# What each run keeps on disk: best.ckpt and last.ckpt (as any fit), only last.ckpt (what ablate evaluates and
# resumes from), or nothing once its result is written (the report holds what the ablation measured).
CHECKPOINTS = ("all", "last", "none")
STATUS_FILE = "status.json"  # step and ETA of the run's fit (callbacks.RunStatus)
# A run folder's name: the run's name with every other character replaced by "_" (no shell quoting needed).
UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]")
RESERVED = {"", ".", "..", "slurm", "analysis", "wandb", *(f"report.{ext}" for ext in ("csv", "md", "png", "json")),
            "runs.csv", "runs.json", "report_trimap.png"}  # the output folder's own entries: no run folder may take their names


@dataclass
class Ablation:
    """A parsed ablation file."""

    name: str
    base: Path
    output_dir: Path  # absolute: every launcher and child writes the same paths into the run configs
    set: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    ms_flip: dict[str, Any] | None = None
    crf: dict[str, Any] | None = None
    output_stride: int | None = None
    checkpoints: str = "all"
    source: Path | None = None  # the ablation file
    seeds: list[int] = field(default_factory=list)  # each row is trained once per seed (none: the config's seed)
    baseline: str | None = None  # the row every other row is compared with, seed by seed
    published: dict[str, list[str]] = field(default_factory=dict)  # row -> ids of published numbers it reproduces

    @property
    def evaluate(self) -> dict[str, Any]:
        """The evaluations of each run, as the file states them (a result records the ones it ran)."""
        settings = {"ms_flip": self.ms_flip, "crf": self.crf}
        return settings if self.output_stride is None else {**settings, "output_stride": self.output_stride}

    def rows(self) -> list[tuple[str, dict[str, Any]]]:
        """(row name, overrides) for every variant and combination of the grid (``base`` without either): what the
        report compares."""
        keys = list(self.grid)
        combos = [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]
        variants = self.variants or {"": {}}
        return [(",".join(part for part in (str(variant), run_name(combo) if combo else "") if part) or "base",
                 {**settings, **combo}) for variant, settings in variants.items() for combo in combos]

    def runs(self) -> list[tuple[str, dict[str, Any]]]:
        """(run name, overrides) for every row and seed: ``<row>,seed=<s>`` with ``seed_everything: s`` when the
        file lists ``seeds``, else the rows. Raises naming both runs when two would share a folder (see
        :func:`folder_name`)."""
        runs = [(f"{row},seed={seed}", {**overrides, SEED_KEY: seed}) for row, overrides in self.rows()
                for seed in self.seeds] if self.seeds else self.rows()
        self._check_folders(runs)
        return runs

    def _check_folders(self, runs: list[tuple[str, dict[str, Any]]]) -> None:
        where = f"Ablation file {self.source}" if self.source else f"Ablation {self.name}"
        seen: dict[str, tuple[str, dict[str, Any]]] = {}
        for name, overrides in runs:
            folder = folder_name(name)
            if folder.casefold() in RESERVED:
                raise ValueError(f"{where}: run {name!r} ({overrides}) would write to {folder!r}, not a folder of its "
                                 f"own under output_dir; give the variant or grid value another name")
            key = folder.casefold()  # one folder on a case-insensitive file system (macOS, Windows)
            if key in seen:
                other, other_overrides = seen[key]
                raise ValueError(f"{where}: runs {other!r} ({other_overrides}) and {name!r} ({overrides}) would share "
                                 f"the folder {folder!r}; rename a variant or change a grid value so their names differ")
            seen[key] = (name, overrides)


def folder_name(run: str) -> str:
    """The folder of run ``run`` under ``output_dir``: its name with each character other than letters, digits and
    ``._,=+-`` replaced by ``_`` (``a/b`` -> ``a_b``), so that it stays inside ``output_dir`` and a shell takes it
    without quotes."""
    return UNSAFE.sub("_", run)


def _fail(path: Path, message: str) -> NoReturn:
    raise ValueError(f"Ablation file {path}: {message}")


def _mapping(path: Path, spec: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    """``spec[key]`` as a mapping (empty when missing or null); errors name the file and key."""
    value = spec.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(path, f"{key} must be a mapping of {what}, got {type(value).__name__} {value!r}")
    return value


def load_ablation(path: str | Path, output_dir: str | Path | None = None) -> Ablation:
    """Read and check an ablation file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Ablation file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        _fail(path, f"not valid YAML{where} ({getattr(err, 'problem', None) or err})")
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        _fail(path, "expected a mapping with keys " + ", ".join(sorted(ABLATION_KEYS)))
    unknown = set(spec) - ABLATION_KEYS
    if unknown:
        _fail(path, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(ABLATION_KEYS)}")
    if "base" not in spec:
        _fail(path, "'base' (the experiment YAML every run starts from) is missing")
    if not isinstance(spec["base"], str) or not spec["base"]:
        _fail(path, f"base must be the path of an experiment YAML (relative to this file), got {spec['base']!r}")
    base = (path.parent / spec["base"]).resolve()
    if not base.is_file():
        _fail(path, f"base experiment {base} does not exist")
    settings = _mapping(path, spec, "set", "dotted config keys to values (trainer.max_steps: 700)")
    variants = _mapping(path, spec, "variants", "variant names to mappings of dotted overrides")
    for variant, overrides in variants.items():
        if not isinstance(overrides, dict):
            _fail(path, f"variants.{variant} must be a mapping of dotted overrides, got {overrides!r}")
    grid = _mapping(path, spec, "grid", "dotted config keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            _fail(path, f"grid.{key} must be a non-empty list of values, got {values!r}")
        both = [variant for variant, overrides in variants.items() if key in overrides]
        if both:
            _fail(path, f"grid.{key} is also set by variant(s) {', '.join(map(str, both))}: a run would take one "
                        f"value and silently drop the other; set it in one place")
    evaluate = _mapping(path, spec, "evaluate", "evaluations (ms_flip, crf, output_stride)")
    if set(evaluate) - {"ms_flip", "crf", "output_stride"}:
        _fail(path, f"evaluate takes ms_flip, crf and output_stride, got {sorted(evaluate)}")
    for key in ("ms_flip", "crf"):
        if not isinstance(evaluate.get(key), (dict, bool, type(None))):
            _fail(path, f"evaluate.{key} must be a mapping of its arguments, true or null, got {evaluate[key]!r}")
    output_stride = evaluate.get("output_stride")
    if output_stride is not None and output_stride not in (8, 16, 32):
        _fail(path, f"evaluate.output_stride must be 8, 16 or 32, got {output_stride!r}")
    seeds = spec.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds) \
            or len(set(seeds)) != len(seeds):
        _fail(path, f"seeds must be a list of distinct whole numbers (e.g. [0, 1, 2]), got {seeds!r}")
    if seeds and any(SEED_KEY in o for o in (settings, *variants.values(), grid)):
        _fail(path, f"seeds and {SEED_KEY} (in set, a variant or the grid) both set the seed: keep one")
    name = spec.get("name") or path.stem
    checkpoints = spec.get("checkpoints", "all")
    if checkpoints not in CHECKPOINTS:
        _fail(path, f"checkpoints must be one of {', '.join(CHECKPOINTS)} (all: best.ckpt and last.ckpt; last: only "
                    f"last.ckpt; none: removed once the run's result is written), got {checkpoints!r}")

    def kwargs(value: Any) -> dict[str, Any] | None:
        return None if value in (None, False) else ({} if value is True else dict(value))

    published = {str(row): ids if isinstance(ids, list) else [ids]
                 for row, ids in _mapping(path, spec, "published", "row names to published-number ids").items()}
    ablation = Ablation(name=str(name), base=base,
                    output_dir=Path(os.path.abspath(output_dir or spec.get("output_dir") or f"runs/ablations/{name}")),
                    set=dict(settings), variants=dict(variants), grid=dict(grid),
                    ms_flip=kwargs(evaluate.get("ms_flip")), crf=kwargs(evaluate.get("crf")),
                    output_stride=output_stride, checkpoints=checkpoints, source=path, seeds=seeds,
                    baseline=spec.get("baseline"), published=published)
    rows = [row for row, _ in ablation.rows()]
    for key, named in (("baseline", [ablation.baseline] if ablation.baseline is not None else []),
                       ("published", list(published))):
        unknown = [row for row in named if row not in rows]
        if unknown:
            _fail(path, f"{key} names {', '.join(map(repr, unknown))}, not a row of this file; its rows: "
                        f"{', '.join(rows)}")
    from .published import check_ids  # the published numbers' data file

    for row, ids in published.items():
        check_ids(ids, f"Ablation file {path}: published.{row}")
    return ablation


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
    """The base config with the ablation's overrides, its outputs under ``run_dir``, wandb grouping, and the
    callbacks that measure training images/s and write the run's progress (``status.json``)."""
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
    added = ("Throughput", "RunStatus")
    callbacks = [c for c in trainer.get("callbacks") or [] if not str(c.get("class_path")).endswith(added)]
    if ablation.checkpoints != "all" and not any(str(c.get("class_path")).endswith("ModelCheckpoint")
                                                 for c in callbacks):
        callbacks.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {}})
    for callback in callbacks:
        if str(callback.get("class_path")).endswith("ModelCheckpoint"):
            callback.setdefault("init_args", {})["dirpath"] = str(run_dir / "checkpoints")
            if ablation.checkpoints != "all":
                callback["init_args"].update(save_top_k=0, save_last=True)
    try:
        max_steps = int(trainer.get("max_steps") or 0)
    except (TypeError, ValueError):
        raise ValueError(f"Run {name} of ablation {ablation.name}: trainer.max_steps must be a whole number of steps, "
                         f"got {trainer['max_steps']!r} (from the base config, the file's set: or --set)") from None
    warmup = min(5, max(max_steps // 4, 0))
    callbacks.append({"class_path": "deeplab_lightning.callbacks.Throughput", "init_args": {"warmup_steps": warmup}})
    callbacks.append({"class_path": "deeplab_lightning.callbacks.RunStatus",
                      "init_args": {"path": str(run_dir / STATUS_FILE)}})
    trainer["callbacks"] = callbacks
    return config


@dataclass
class PlannedRun:
    """One run of an ablation: its name, folder, config (YAML text), grid values, and the row and seed it is."""

    name: str
    folder: Path
    config: str
    grid_values: dict[str, Any]
    row: str = ""
    seed: int | None = None


def plan(ablation: Ablation) -> list[PlannedRun]:
    """Every run of ``ablation`` with its folder and config (nothing is written)."""
    base = yaml.safe_load(ablation.base.read_text())
    runs = []
    for name, overrides in ablation.runs():
        folder = ablation.output_dir / folder_name(name)
        config = run_config(ablation, base, name, overrides, folder)
        seed = overrides.get(SEED_KEY) if ablation.seeds else None
        row = name.rsplit(",seed=", 1)[0] if ablation.seeds else name
        runs.append(PlannedRun(name, folder, yaml.safe_dump(config, sort_keys=False),
                               {k: v for k, v in overrides.items() if k in ablation.grid}, row, seed))
    return runs
