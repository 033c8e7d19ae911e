"""Every experiment YAML parses and trains one step on the toy data (real model, small inputs)."""
from pathlib import Path

import pytest
import yaml

from deeplab_lightning.commands.cli import main

from conftest import REPO

EXPERIMENTS = sorted(p for p in (REPO / "experiments").glob("*.yaml") if p.name != "quickstart_eval_ms_flip_crf.yaml")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_parses(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    raw = yaml.safe_load(path.read_text())
    assert printed["model"]["arch"] == raw["model"]["arch"]
    assert printed["trainer"]["max_steps"] == raw["trainer"]["max_steps"]


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if "WandbLogger" in p.read_text()], ids=lambda p: p.stem)
def test_every_experiment_groups_and_tags_its_wandb_run(path, capsys):
    """The quickstart and own-data runs are grouped and tagged in wandb as the paper runs are: the logger the
    parsed config builds passes a group and tags to wandb.init."""
    from lightning.pytorch.loggers import WandbLogger

    with pytest.raises(SystemExit):
        main(["fit", "--config", str(path), "--print_config"])
    args = yaml.safe_load(capsys.readouterr().out)["trainer"]["logger"]["init_args"]
    wandb_init = WandbLogger(**args)._wandb_init  # what the logger hands to wandb.init
    assert isinstance(wandb_init.get("group"), str) and wandb_init["group"], path.name
    assert isinstance(wandb_init.get("tags"), list) and wandb_init["tags"], path.name


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if p.stem != "quickstart"], ids=lambda p: p.stem)
def test_experiment_fast_dev_run_on_toy_data(path, toy_dir, toy_settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ and checkpoints land here
    toy = [f"--data.{k}={v}" for k, v in toy_settings.items() if k != "size_range"]
    cli = main(["fit", "--config", str(path), "--trainer.fast_dev_run=1",
                "--trainer.accelerator=cpu", "--trainer.devices=1", "--model.pretrained_backbone=false",
                "--model.init_checkpoint=null",  # quickstart_crf_rnn starts from the quickstart's checkpoint
                "--model.freeze_bn=false",  # V2 keeps ImageNet's BatchNorm statistics; random weights have none
                "--trainer.precision=32-true",  # bf16 is for GPUs; a CPU without native bf16 emulates it, 20x slower
                "--data=deeplab_lightning.data.ToyVOCDataModule", f"--data.data_dir={toy_dir}",
                f"--data.size_range=[{toy_settings['size_range'][0]}, {toy_settings['size_range'][1]}]", *toy,
                "--data.colour_cue=false",  # toy_dir's data (the quickstart configs draw the colour-cued set)
                "--data.crop_size=65", "--data.batch_size=2", "--data.num_workers=0", "--data.train_split=train"])
    assert cli.trainer.global_step == 1
    assert "val/mIoU" in cli.trainer.callback_metrics


def test_quickstart_script_picks_precision_and_layout_from_the_cpu(tmp_path):
    """scripts/quickstart.sh: bf16 + channels-last only where /proc/cpuinfo lists native bf16, else fp32 without
    channels-last (a stub venv records the command it would run)."""
    import hashlib
    import subprocess

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, body in (("python", "exit 1"), ("deeplab-lightning", f'echo "$@" > {tmp_path}/args')):  # no installs
        (venv / "bin" / name).write_text(f"#!/bin/sh\n{body}\n")
        (venv / "bin" / name).chmod(0o755)
    wanted = b"".join((REPO / f).read_bytes() for f in ("requirements.txt", "requirements-dev.txt", "setup.cfg"))
    (venv / ".deeplab-installed").write_text(hashlib.sha256(wanted).hexdigest() + "\n")  # nothing to install
    subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh"), "--trainer.max_steps", "5"], check=True,
                   env={"PATH": "/usr/bin:/bin", "DEEPLAB_VENV": str(venv)}, capture_output=True)
    args = (tmp_path / "args").read_text().split()
    flags = Path("/proc/cpuinfo").read_text().split()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    expected = ("bf16-mixed", "true") if native else ("32-true", "false")
    assert args[args.index("--trainer.precision") + 1] == expected[0]
    assert args[args.index("--model.channels_last") + 1] == expected[1]
    assert args[-2:] == ["--trainer.max_steps", "5"] and "experiments/quickstart.yaml" in args
