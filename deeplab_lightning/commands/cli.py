"""The ``deeplab-lightning`` command: LightningCLI with ``fit``, ``validate``, ``test`` and ``predict``."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from rich.console import Console

from ..callbacks import (CurrentLastCheckpoint, FinalValidation, NetworkSummary, PreemptionCheckpoint,
                         ScheduleCheck, SegmentationWriter)
from ..runs.checkpoints import AtomicCheckpointIO, install_atomic_checkpoint_io
from ..compat import check_private_api
from ..data.base import SegmentationDataModule
from .errors import ConciseArgumentParser
from .experiment import derive_run_paths, standard_callbacks, test_on_validation_split
from ..training import SegmentationModule
from ..training.module import WANDB_RUN_ID
from .quiet import drop_wandb_anonymous, silence_third_party_noise
from ..runs.folder import (ENV_RUN_DIR, claim_run_folder, latest_last_checkpoint, relocate, release_run_folder,
                           remove_if_empty, unused_path)
from ..runs.info import run_info

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


def default_wandb_mode() -> None:
    """Log to wandb offline unless the user chose otherwise (``WANDB_MODE``) or has logged in."""
    if "WANDB_MODE" in os.environ or os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return
    os.environ["WANDB_MODE"] = "offline"


def run_summary(trainer: L.Trainer, log_dir: str | None, configs: list | None = None) -> str:
    """Where a finished fit wrote its checkpoints (the best with its score and step), config and logs, and the
    command that tests its best checkpoint."""
    lines = [f"Run folder: {log_dir}"]
    best, saved_config = None, None
    for callback in trainer.checkpoint_callbacks:
        if callback.best_model_path:
            best = callback.best_model_path
            step = AtomicCheckpointIO().load_checkpoint(best, map_location="cpu", mmap=True)["global_step"]
            score = "" if callback.best_model_score is None else (
                f"{callback.monitor} {float(callback.best_model_score):.4f} at ")
            lines.append(f"  best checkpoint: {best} ({score}step {step})")
        if callback.last_model_path and Path(callback.last_model_path).is_file():
            step = AtomicCheckpointIO().load_checkpoint(callback.last_model_path, map_location="cpu",
                                                        mmap=True)["global_step"]
            lines.append(f"  last checkpoint: {callback.last_model_path} (step {step})")
    for callback in trainer.callbacks:
        if isinstance(callback, SaveRunConfig) and callback.saved_to is not None:
            saved_config = callback.saved_to
            lines.append(f"  config: {saved_config}")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            mode = os.environ.get("WANDB_MODE", "online")
            run = logger.experiment
            where = f"{Path(run.dir).parent} (sync later: wandb sync {Path(run.dir).parent})" if mode == "offline" \
                else (run.url or Path(run.dir).parent)
            lines.append(f"  wandb run ({mode}): {where}")
        elif logger.log_dir:
            lines.append(f"  {type(logger).__name__} logs: {logger.log_dir}")
    if best is not None:  # with the run's own config: it holds the command line's overrides too
        config_args = [f"--config {shlex.quote(str(c))}" for c in ([saved_config] if saved_config else configs or [])]
        lines.append(" ".join([f"Test it: {command_name()} test", *config_args, f"--ckpt_path {shlex.quote(str(best))}"]))
    return "\n".join(lines)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX, as /proc/cpuinfo lists them; assumed so
    where there is no such file)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def command_name() -> str:
    """``deeplab-lightning`` where that name runs this installation, else the path of this environment's script
    (the command then works as printed without activating the environment)."""
    script = Path(sys.executable).parent / "deeplab-lightning"
    found = shutil.which("deeplab-lightning")
    if found and Path(found).resolve() == script.resolve():
        return "deeplab-lightning"
    return str(script) if script.is_file() else f"{sys.executable} -m deeplab_lightning"


class SaveRunConfig(SaveConfigCallback):
    """A fit writes its resolved ``config.yaml`` and ``run_info.json`` (git commit, package versions, command
    line) to the run folder (a resumed fit adds ``config-2.yaml`` ..., never replacing the first); every command
    sends the resolved config and the run info to the logger (the wandb run's config), so every run can be
    traced and compared by any setting. Evaluation and prediction write no files here. A fit that fails before
    its first training step (a refused resume, a data error) removes the two files it wrote: they describe no
    training."""

    saved_to: Path | None = None  # the config file this fit wrote
    _written: tuple[Path, ...] = ()
    _trained = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir if stage == "fit" else None  # a collective under DDP: every process asks
        if trainer.is_global_zero:
            if log_dir is not None:
                Path(log_dir).mkdir(parents=True, exist_ok=True)
                self.saved_to = unused_path(Path(log_dir) / self.config_filename)
                self.parser.save(self.config, self.saved_to, skip_none=False, multifile=self.multifile)
                info = unused_path(Path(log_dir) / "run_info.json")
                info.write_text(json.dumps(run_info(), indent=2))
                self._written = (self.saved_to, info)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._trained = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not self._trained and not trainer.received_sigterm:
            for path in self._written:
                path.unlink(missing_ok=True)
            self.saved_to, self._written = None, ()

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.logger is not None:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            config.pop("config", None)
            trainer.logger.log_hyperparams({"config": config, "run_info": run_info()})


class DeepLabCLI(LightningCLI):
    """Links the data module's ``num_classes``, ``class_names`` and ``ignore_index`` into the model.

    With ``--ckpt_path`` the model is built from the config and command line, not from the checkpoint's saved
    hyperparameters (LightningCLI's default would silently override them): evaluating a model trained at
    output stride 16 at ``--model.output_stride 8`` is how the papers test. A checkpoint of another
    architecture or number of classes is refused by ``SegmentationModule.on_load_checkpoint``.

    The run folder and wandb name come from the experiment file's name, and the standard callbacks are added
    unless configured (:mod:`deeplab_lightning.commands.experiment`). A fit claims its run folder
    (:mod:`deeplab_lightning.runs.folder`: a new ``<folder>-N`` when the configured
    one holds another run), saves ``last.ckpt`` and exits with status 143 when SIGTERM stops it
    (:class:`~deeplab_lightning.callbacks.PreemptionCheckpoint`), and warns at its start when nothing schedules
    the learning rate (:class:`~deeplab_lightning.callbacks.ScheduleCheck`). Checkpoints are written atomically
    (:class:`~deeplab_lightning.runs.checkpoints.AtomicCheckpointIO`) whatever ``trainer.plugins`` holds;
    ``predict`` writes PNGs (a :class:`~deeplab_lightning.callbacks.SegmentationWriter` unless one is set).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.run_dir: Path | None = None
        try:
            super().__init__(*args, **kwargs)
        except BaseException as err:
            if self.run_dir is not None:
                release_run_folder(self.run_dir)
                remove_if_empty(self.run_dir)  # a fit that failed before writing anything leaves no folder
                self.run_dir = None
            trainer = getattr(self, "trainer", None)
            if trainer is not None and trainer.received_sigterm:
                raise SystemExit(PREEMPTED_EXIT_CODE) from err
            raise
        finally:
            if self.run_dir is not None:
                release_run_folder(self.run_dir)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        derive_run_paths(config, self.subcommand)
        self._configure_wandb(config.trainer)
        if self.subcommand == "fit":
            self._claim_run_folder(config)
            self._continue_wandb_run(config)

    def _configure_wandb(self, trainer_config: Any) -> None:
        """wandb runs only for fit, validate and test, each with its ``job_type`` (fit, validate, test) so
        the project tells them apart; predict logs nothing."""
        loggers = trainer_config.logger if isinstance(trainer_config.logger, list) else [trainer_config.logger]
        wandb = [lg for lg in loggers if hasattr(lg, "class_path") and lg.class_path.endswith("WandbLogger")]
        if self.subcommand == "predict":
            kept = [lg for lg in loggers if lg not in wandb and lg not in (None, False, True)]
            trainer_config.logger = kept or False
            return
        split = test_on_validation_split(self.config[self.subcommand]) if self.subcommand == "test" else None
        for logger in wandb:
            if logger.init_args.get("job_type") is None:
                logger.init_args["job_type"] = self.subcommand
            if split is not None:  # as the metrics say it: test_on_<split>/mIoU
                logger.init_args["tags"] = [*(logger.init_args.get("tags") or []), f"test_on_{split}"]
                if logger.init_args.get("name"):
                    logger.init_args["name"] = f"{logger.init_args['name']} (test on the {split} split)"

    def _continue_wandb_run(self, config: Any) -> None:
        """A fit that continues a run from its checkpoint logs to that run's wandb run (the id the checkpoint
        saved), not to a second run of the same name."""
        ckpt = config.ckpt_path
        if ckpt in (None, "best", "hpc", "registry") or not Path(ckpt).is_file():
            return
        loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else [config.trainer.logger]
        wandb = [lg for lg in loggers if hasattr(lg, "class_path") and lg.class_path.endswith("WandbLogger")
                 and lg.init_args.get("id") is None and lg.init_args.get("version") is None]
        if wandb:
            run_id = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get(WANDB_RUN_ID)
            for logger in wandb:
                logger.init_args["id"] = run_id  # WandbLogger resumes it (resume="allow")

    PREFLIGHT_SPLITS = {"fit": ("train_split", "val_split"), "validate": ("val_split",), "test": ("test_split",),
                        "predict": ()}

    def _preflight(self) -> None:
        """Fail on a missing checkpoint or split before anything starts (a wandb run, data workers)."""
        ckpt_path = self.config[self.subcommand].ckpt_path
        if ckpt_path not in (None, "last", "best", "hpc", "registry") and not Path(ckpt_path).is_file():
            folder = Path(ckpt_path).parent
            there = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
            raise FileNotFoundError(f"--ckpt_path {ckpt_path} does not exist"
                                    + (f"; {folder} holds {', '.join(there)}" if there else ""))
        for attr in self.PREFLIGHT_SPLITS[self.subcommand]:
            split = getattr(self.datamodule, attr, None)
            if split is not None and hasattr(self.datamodule, "samples"):
                self.datamodule.samples(split)

    before_fit = before_validate = before_test = before_predict = _preflight

    def _claim_run_folder(self, config: Any) -> None:
        """Choose and lock the fit's run folder (rank 0; the processes DDP starts inherit the choice) and move
        every output path of the config into it."""
        root = config.trainer.default_root_dir
        if root is None:
            return
        if config.ckpt_path == "last":  # the run this config wrote last, continued in its folder
            config.ckpt_path = str(latest_last_checkpoint(Path(root)))
        if rank_zero_only.rank == 0:
            self.run_dir = claim_run_folder(Path(root), config.ckpt_path)
            os.environ[ENV_RUN_DIR] = str(self.run_dir)  # inherited by the processes DDP starts
            run_dir = self.run_dir
        else:
            run_dir = Path(os.environ.get(ENV_RUN_DIR, root))
        relocate(config, Path(root), run_dir)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.ignore_index", apply_on="instantiate")

    # The three private LightningCLI methods overridden here are listed, with their reasons, in compat.OVERRIDDEN.
    def _parse_ckpt_path(self) -> None:
        return None

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_argument("--output_dir", type=Optional[str], default=None,
                                help="Folder for the predicted PNGs and overlays (default: "
                                     "<trainer.default_root_dir>/predictions, or predictions-N if that exists)")
            parser.add_argument("--overwrite", type=bool, default=False,
                                help="Replace predictions already in output_dir (otherwise they are refused)")
        if subcommand in ("validate", "test"):
            parser.set_defaults(verbose=False)  # IoUTable prints the metrics; Lightning's table would repeat them
        return parser

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> L.Trainer:
        configured = config.get("callbacks") or []
        configured = [*(configured if isinstance(configured, list) else [configured]), *callbacks]
        logger = config.get("logger")
        loggers = [lg for lg in (logger if isinstance(logger, list) else [logger]) if isinstance(lg, Logger)]
        added = standard_callbacks(config, configured, self.subcommand, loggers)
        return super()._instantiate_trainer(config, [*callbacks, *added])

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if str(trainer.precision).startswith("bf16") and trainer.strategy.root_device.type == "cpu" \
                and not cpu_has_native_bf16():
            rank_zero_warn(f"trainer.precision {trainer.precision} on a CPU without native bfloat16 (no AVX512-BF16 "
                           f"or AMX): PyTorch emulates it, about 20x slower than fp32; pass --trainer.precision "
                           f"32-true (the paper configs' bf16 is meant for GPUs)")
        install_atomic_checkpoint_io(trainer.strategy)
        for logger in trainer.loggers:
            drop_wandb_anonymous(logger)
        trainer.callbacks.insert(0, PreemptionCheckpoint())
        if self.subcommand == "fit":
            trainer.callbacks[1:1] = [FinalValidation(), CurrentLastCheckpoint(), NetworkSummary(), ScheduleCheck()]
        if self.subcommand == "predict":
            self._configure_writers(trainer)
        return trainer

    def after_fit(self) -> None:
        """The last lines of a fit: where its checkpoints, config and logs are, and the next command."""
        log_dir = self.trainer.log_dir  # a collective under DDP: every process asks
        if self.trainer.is_global_zero:
            Console().print(run_summary(self.trainer, log_dir, self.config["fit"].config), highlight=False,
                            soft_wrap=True)

    def _configure_writers(self, trainer: L.Trainer) -> None:
        """``predict`` writes PNGs: a :class:`SegmentationWriter` is added when none is configured, and
        ``--output_dir`` / ``--overwrite`` apply to it."""
        config = self.config["predict"]
        writers = [c for c in trainer.callbacks if isinstance(c, SegmentationWriter)]
        if not any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
            output_dir = config.output_dir or unused_path(Path(trainer.default_root_dir) / "predictions", folder=True)
            writers.append(SegmentationWriter(str(output_dir)))
            trainer.callbacks.append(writers[-1])
        for writer in writers:
            if config.output_dir is not None:
                writer.output_dir = Path(config.output_dir)
            writer.overwrite = writer.overwrite or config.overwrite


def main(args: list[str] | None = None) -> DeepLabCLI:
    """Run the command line; ``args`` replaces ``sys.argv[1:]`` (for tests and notebooks)."""
    check_private_api()
    default_wandb_mode()
    silence_third_party_noise()
    argv = sys.argv
    if args is not None:  # parsed from sys.argv, which the processes DDP starts run again (not pytest's arguments)
        sys.argv = [*argv[:1], *args]
    try:
        return DeepLabCLI(
            SegmentationModule,
            SegmentationDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_callback=SaveRunConfig,
            trainer_defaults={"enable_model_summary": False},  # NetworkSummary instead (see .quiet)
            parser_kwargs={"allow_abbrev": False,  # a misspelt key is an error, never a prefix match
                           "prog": "deeplab-lightning"},  # also under python -m deeplab_lightning
            parser_class=ConciseArgumentParser,
        )
    finally:
        sys.argv = argv
