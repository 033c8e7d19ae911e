"""A fit killed mid-epoch and resumed from last.ckpt ends with the same weights as an uninterrupted fit."""
import os
import subprocess
import sys

import torch
import yaml

from deeplab_lightning.cli import main

from conftest import REPO

STEPS, EVERY, KILL_AT = 14, 5, 12  # 8 batches per epoch: the last checkpoint (step 10) is mid-epoch 1


def _config(write_config, tmp_path, toy_dir, toy_settings, name, extra_callbacks=()):
    run_dir = tmp_path / name
    run_dir.mkdir()
    path = write_config(run_dir, toy_dir, toy_settings, max_steps=STEPS)
    config = yaml.safe_load(path.read_text())
    trainer = config["trainer"]
    trainer["deterministic"] = True
    trainer["callbacks"] = [
        {"class_path": "deeplab_lightning.callbacks.PolyLR"},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(run_dir / "ckpt"), "every_n_train_steps": EVERY, "save_last": True}},
        *extra_callbacks,
    ]
    config["data"]["init_args"]["num_workers"] = 1  # the sampler state must survive worker prefetching
    config["data"]["init_args"]["persistent_workers"] = False
    path.write_text(yaml.safe_dump(config))
    return path


def test_killed_fit_resumes_exactly_from_last_ckpt(tmp_path, toy_dir, toy_settings, write_config):
    killed = _config(write_config, tmp_path, toy_dir, toy_settings, "killed",
                     [{"class_path": "killer.KillAtStep", "init_args": {"step": KILL_AT}}])
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"), OMP_NUM_THREADS=str(torch.get_num_threads()))
    out = subprocess.run([sys.executable, "-m", "deeplab_lightning", "fit", "--config", str(killed)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == -9, out.stderr[-2000:]
    last = tmp_path / "killed" / "ckpt" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 10 and saved["epoch"] == 1

    resume_config = _config(write_config, tmp_path, toy_dir, toy_settings, "resumed")
    resumed = main(["fit", "--config", str(resume_config), "--ckpt_path", str(last)])
    reference = main(["fit", "--config", str(_config(write_config, tmp_path, toy_dir, toy_settings, "uninterrupted"))])

    assert resumed.trainer.global_step == reference.trainer.global_step == STEPS
    lrs = [[g["lr"] for g in cli.trainer.optimizers[0].param_groups] for cli in (resumed, reference)]
    assert lrs[0] == lrs[1]
    ref_state = reference.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, ref_state[name]), name
