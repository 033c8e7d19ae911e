"""An experiment YAML holds only its recipe: run folder, wandb name and the standard callbacks come from the
command (deeplab_lightning.commands.experiment)."""
from pathlib import Path

import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from deeplab_lightning.callbacks import IoUTable, PerImageConfusion, ProgressBar, WandbReport
from deeplab_lightning.commands.cli import main
from deeplab_lightning.commands.experiment import derive_run_paths, standard_callbacks


def wandb_config(config_files, **trainer):
    logger = Namespace(class_path="lightning.pytorch.loggers.WandbLogger",
                       init_args=Namespace(project="p", name=None, save_dir="."))
    return Namespace(config=config_files, trainer=Namespace(default_root_dir=None, logger=logger, **trainer))


def test_run_folder_and_wandb_name_come_from_the_experiment_file_unless_set():
    config = wandb_config([Path("experiments/base.yaml"), Path("experiments/v3_r101.yaml")])
    derive_run_paths(config)
    assert config.trainer.default_root_dir == str(Path("runs/v3_r101"))
    assert config.trainer.logger.init_args.name == "v3_r101"
    assert config.trainer.logger.init_args.save_dir == str(Path("runs/v3_r101"))

    config = wandb_config([Path("x.yaml")])
    config.trainer.default_root_dir = "elsewhere"
    config.trainer.logger.init_args.name, config.trainer.logger.init_args.save_dir = "mine", "logs"
    derive_run_paths(config)
    assert (config.trainer.default_root_dir, config.trainer.logger.init_args.name,
            config.trainer.logger.init_args.save_dir) == ("elsewhere", "mine", "logs")

    # a run's checkpoint evaluated with an added evaluation config: the run's folder (Lightning then finds the
    # checkpoint's callback where it was saved), named after the evaluation in wandb
    config = wandb_config([Path("quickstart.yaml"), Path("quickstart_eval_ms_flip_crf.yaml")])
    config.ckpt_path = "runs/quickstart/checkpoints/best.ckpt"
    derive_run_paths(config, "test")
    assert config.trainer.default_root_dir == str(Path("runs/quickstart"))
    assert config.trainer.logger.init_args.name == "quickstart_eval_ms_flip_crf"

    config = wandb_config(None)  # no config file: nothing to name it after, Lightning's defaults stay
    derive_run_paths(config)
    assert config.trainer.default_root_dir is None and config.trainer.logger.init_args.name is None


def test_standard_callbacks_are_added_only_where_the_config_has_none_of_their_kind(tmp_path):
    kinds = lambda callbacks: sorted(type(c).__name__ for c in callbacks)  # noqa: E731
    logger = CSVLogger(tmp_path)
    fit = standard_callbacks({"default_root_dir": str(tmp_path)}, [], "fit", [logger])
    assert kinds(fit) == ["IoUTable", "LearningRateMonitor", "ModelCheckpoint", "ProgressBar", "Throughput"]
    checkpoint = next(c for c in fit if isinstance(c, ModelCheckpoint))
    assert (Path(checkpoint.dirpath), checkpoint.monitor, checkpoint.save_last) == (
        tmp_path / "checkpoints", "val/mIoU", True)
    own = [ProgressBar(), ModelCheckpoint(dirpath=str(tmp_path / "mine"))]
    assert kinds(standard_callbacks({}, own, "fit", [logger])) == ["IoUTable", "LearningRateMonitor", "Throughput"]
    quiet = {"enable_progress_bar": False, "enable_checkpointing": False}
    assert kinds(standard_callbacks(quiet, [], "fit", [])) == ["IoUTable"]
    assert kinds(standard_callbacks({}, [IoUTable()], "test", [logger])) == [
        "ModelCheckpoint", "PerImageConfusion", "ProgressBar"]  # per-image matrices in validate and test only
    assert kinds(standard_callbacks(quiet, [PerImageConfusion(label="mine")], "validate", [])) == ["IoUTable"]
    assert not any(isinstance(c, WandbReport) for c in fit)  # no wandb logger here


def test_a_recipe_only_experiment_trains_into_runs_named_after_its_file(tmp_path, monkeypatch, toy_dir,
                                                                       toy_settings, write_config):
    config = yaml.safe_load(write_config(tmp_path / "ignored", toy_dir, toy_settings).read_text())
    del config["trainer"]["default_root_dir"]
    config["trainer"]["callbacks"] = [{"class_path": "deeplab_lightning.callbacks.PolyLR"}]
    experiment = tmp_path / "my_ablation_os8.yaml"
    experiment.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(experiment)])
    run = tmp_path / "runs" / "my_ablation_os8"
    assert Path(cli.trainer.default_root_dir).resolve() == run.resolve()
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    assert sum(isinstance(c, ModelCheckpoint) for c in cli.trainer.callbacks) == 1
