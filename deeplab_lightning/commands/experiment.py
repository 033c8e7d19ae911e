"""What every experiment gets without writing it: its run folder and wandb run name from the experiment file's
name, and the standard callbacks (progress, lr monitor, IoU table, wandb report, best and last checkpoints).

An experiment YAML then holds only its recipe: ``experiments/v3_r101_os16_mg124_voc_513_30k_bs16.yaml`` trains
into ``runs/v3_r101_os16_mg124_voc_513_30k_bs16/`` (checkpoints in its ``checkpoints/``) under the wandb name
``v3_r101_os16_mg124_voc_513_30k_bs16``. Whatever the config sets itself is kept.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger

from ..callbacks import IoUTable, PerImageConfusion, ProgressBar, Throughput, WandbReport

RUNS_ROOT = Path("runs")


def experiment_name(config_files: Sequence[Any] | None) -> str | None:
    """The stem of the last config file given (``--config``), or None without one."""
    return Path(str(config_files[-1])).stem if config_files else None


def checkpoint_run_folder(ckpt_path: Any) -> Path | None:
    """The run folder a checkpoint was saved in (``runs/x`` of ``runs/x/checkpoints/best.ckpt``), else None."""
    if not isinstance(ckpt_path, (str, Path)) or str(ckpt_path) in ("best", "last", "hpc", "registry"):
        return None
    path = Path(ckpt_path)
    return path.parent.parent if path.parent.name == "checkpoints" else None


def derive_run_paths(config: Any, subcommand: str = "fit") -> None:
    """Fill, in place, what a parsed subcommand config leaves unset: ``trainer.default_root_dir`` becomes
    ``runs/<experiment>`` (for validate, test and predict of a run's checkpoint, that run's folder, whatever
    evaluation config is added), and a WandbLogger's ``name`` the experiment's name and its ``save_dir``
    (default ``"."``) the run folder."""
    name = experiment_name(config.get("config"))
    trainer = config.trainer
    if trainer.default_root_dir is None:
        run = checkpoint_run_folder(config.get("ckpt_path")) if subcommand != "fit" else None
        if run is not None or name is not None:
            trainer.default_root_dir = str(run if run is not None else RUNS_ROOT / name)
    loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
    for logger in loggers:
        if not (hasattr(logger, "class_path") and logger.class_path.endswith("WandbLogger")):
            continue
        args = logger.init_args
        if name is not None and args.get("name") is None:
            args["name"] = name
        if trainer.default_root_dir is not None and args.get("save_dir") in (None, "."):
            args["save_dir"] = trainer.default_root_dir


def test_on_validation_split(config: Any) -> str | None:
    """The split name when a parsed ``test`` config tests on the data module's validation split (VOC and
    Cityscapes have no public test labels: ``test_split`` defaults to ``val``), else None."""
    data = config.get("data")
    args = data.get("init_args") if data is not None and hasattr(data, "get") else None
    if args is None:
        return None
    test, val = args.get("test_split", "val"), args.get("val_split", "val")
    return test if test is not None and test == val else None


def standard_callbacks(trainer_config: dict[str, Any], configured: Sequence[Callback], subcommand: str,
                       loggers: Sequence[Logger]) -> list[Callback]:
    """The standard callbacks a config does not set itself (one of the same class counts as set):
    :class:`ProgressBar` (unless ``enable_progress_bar: false``), :class:`IoUTable`, a :class:`WandbReport`
    with a wandb logger, for ``validate`` and ``test`` a :class:`PerImageConfusion` (per-image confusion matrices
    and the worst images in ``<default_root_dir>/evaluations``), for ``fit`` a step-wise
    :class:`LearningRateMonitor` and :class:`Throughput` (``train/img_per_s``) with any logger, and a
    :class:`ModelCheckpoint` keeping ``best.ckpt`` (highest ``val/mIoU``) and ``last.ckpt`` in
    ``<default_root_dir>/checkpoints`` (unless ``enable_checkpointing: false``; it saves only in ``fit``, and
    tells Lightning which callback wrote a ``--ckpt_path`` being evaluated)."""
    def missing(kind: type) -> bool:
        return not any(isinstance(c, kind) for c in configured)

    added: list[Callback] = []
    if trainer_config.get("enable_progress_bar") is not False and missing(ProgressBar):
        added.append(ProgressBar())
    if missing(IoUTable):
        added.append(IoUTable())
    if any(isinstance(lg, WandbLogger) for lg in loggers) and missing(WandbReport):
        added.append(WandbReport())
    if subcommand in ("validate", "test") and missing(PerImageConfusion):
        added.append(PerImageConfusion())
    if subcommand == "fit" and loggers and missing(LearningRateMonitor):
        added.append(LearningRateMonitor(logging_interval="step"))
    if subcommand == "fit" and loggers and missing(Throughput):
        added.append(Throughput())
    if trainer_config.get("enable_checkpointing") is not False and missing(ModelCheckpoint):
        root = Path(trainer_config.get("default_root_dir") or ".")
        added.append(ModelCheckpoint(dirpath=root / "checkpoints", filename="best", monitor="val/mIoU", mode="max",
                                     save_last=True, enable_version_counter=False))
    return added
