"""The ``deeplab-lightning`` command: LightningCLI with ``fit``, ``validate``, ``test`` and ``predict``."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from .data.base import SegmentationDataModule
from .module import SegmentationModule
from .run_info import run_info


def default_wandb_mode() -> None:
    """Log to wandb offline unless the user chose otherwise (``WANDB_MODE``) or has logged in."""
    if "WANDB_MODE" in os.environ or os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return
    os.environ["WANDB_MODE"] = "offline"


class SaveRunConfig(SaveConfigCallback):
    """Besides LightningCLI's ``config.yaml`` in the log folder, writes ``run_info.json`` (git commit, package
    versions, command line) there, and sends the resolved config and the run info to the logger (the wandb
    run's config), so every run can be traced and compared by any setting."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.log_dir = trainer.log_dir  # a collective under DDP: every process must ask, not only rank 0
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        info = run_info()
        if self.log_dir is not None:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.log_dir) / "run_info.json").write_text(json.dumps(info, indent=2))
        if trainer.logger is not None:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            config.pop("config", None)
            trainer.logger.log_hyperparams({"config": config, "run_info": info})


TRAINER_DEFAULTS: dict[str, Any] = {
    "plugins": [{"class_path": "deeplab_lightning.checkpoint_io.AtomicCheckpointIO"}],
}


class DeepLabCLI(LightningCLI):
    """Links the data module's ``num_classes``, ``class_names`` and ``ignore_index`` into the model.

    With ``--ckpt_path`` the model is built from the config and command line, not from the checkpoint's saved
    hyperparameters (LightningCLI's default would silently override them): evaluating a model trained at
    output stride 16 at ``--model.output_stride 8`` is how the papers test. A checkpoint of another
    architecture or number of classes is refused by ``SegmentationModule.on_load_checkpoint``.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.ignore_index", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        return None


def main(args: list[str] | None = None) -> DeepLabCLI:
    """Run the command line; ``args`` replaces ``sys.argv[1:]`` (for tests and notebooks)."""
    default_wandb_mode()
    return DeepLabCLI(
        SegmentationModule,
        SegmentationDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_callback=SaveRunConfig,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=TRAINER_DEFAULTS,
        parser_kwargs={"allow_abbrev": False},  # a misspelt key is an error, never a prefix match
        args=args,
    )


def console_main() -> None:
    """The ``deeplab-lightning`` console script: LightningCLI's subcommands, plus ``check-data`` and
    ``ablate``."""
    if len(sys.argv) > 1 and sys.argv[1] == "check-data":
        from .check_data import main as check_data_main

        sys.exit(check_data_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "ablate":
        from .ablate import main as ablate_main

        default_wandb_mode()
        sys.exit(ablate_main(sys.argv[2:]))
    main()
