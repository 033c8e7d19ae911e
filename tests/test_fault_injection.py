"""Faults injected into ``deeplab-lightning fit`` run as users run it: SIGKILL and SIGTERM mid-epoch (both resume
exactly), a disk that fills up while saving, two fits started at once with one config."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml

from deeplab_lightning.commands.cli import PREEMPTED_EXIT_CODE, main

from conftest import REPO

STEPS, EVERY, STOP_AT = 14, 5, 12  # 8 batches per epoch: the last periodic checkpoint (step 10) is mid-epoch 1
ENV = dict(os.environ, PYTHONPATH=str(REPO / "tests"), OMP_NUM_THREADS=str(torch.get_num_threads()))


def _config(write_config, tmp_path, toy_dir, toy_settings, name, extra_callbacks=(), steps=STEPS):
    run_dir = tmp_path / name
    path = write_config(run_dir, toy_dir, toy_settings, max_steps=steps)
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


def _command(config, *args, **popen):
    return subprocess.Popen([sys.executable, "-m", "deeplab_lightning", "fit", "--config", str(config), *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_sigkill_and_sigterm_mid_epoch_resume_exactly(tmp_path, toy_dir, toy_settings, write_config):
    """SIGKILL loses the steps since the last periodic checkpoint; SIGTERM saves the current step and exits 143.
    Either way a fit resumed from last.ckpt ends with exactly the weights of an uninterrupted fit."""
    runs = {}
    for name, signal in (("killed", "SIGKILL"), ("terminated", "SIGTERM")):
        stop = {"class_path": "faults.SignalAtStep", "init_args": {"step": STOP_AT, "signal": signal}}
        runs[name] = _command(_config(write_config, tmp_path, toy_dir, toy_settings, name, [stop]))
        runs[name].wait(timeout=600)  # one at a time: two cores
    killed, terminated = (runs[n] for n in ("killed", "terminated"))
    assert killed.returncode == -9, killed.stderr.read()[-2000:]
    stderr = terminated.stderr.read()
    assert terminated.returncode == PREEMPTED_EXIT_CODE, stderr[-2000:]
    assert f"--ckpt_path {tmp_path / 'terminated' / 'ckpt' / 'last.ckpt'}" in stderr  # says how to resume
    assert _weights(tmp_path / "killed" / "ckpt" / "last.ckpt")["global_step"] == 10  # the periodic one
    assert _weights(tmp_path / "terminated" / "ckpt" / "last.ckpt")["global_step"] == STOP_AT  # saved at SIGTERM

    reference = main(["fit", "--config", str(_config(write_config, tmp_path, toy_dir, toy_settings, "reference"))])
    ref_state = reference.model.state_dict()
    for name in runs:
        config = _config(write_config, tmp_path, toy_dir, toy_settings, name)  # same run, without the fault
        resumed = main(["fit", "--config", str(config), "--ckpt_path", str(tmp_path / name / "ckpt" / "last.ckpt")])
        assert resumed.run_dir == tmp_path / name  # continues in its own folder
        assert resumed.trainer.global_step == STEPS
        lrs = [[g["lr"] for g in cli.trainer.optimizers[0].param_groups] for cli in (resumed, reference)]
        assert lrs[0] == lrs[1]
        for key, value in resumed.model.state_dict().items():
            assert torch.equal(value, ref_state[key]), (name, key)
        assert (tmp_path / name / "config-2.yaml").is_file()  # the resumed config beside, not over, the first


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, toy_dir, toy_settings, write_config,
                                                               monkeypatch):
    monkeypatch.setattr(torch, "save", torch.save)  # the callback replaces it; restored after the test
    full = {"class_path": "faults.DiskFullAtSave", "init_args": {"step": 6}}
    config = _config(write_config, tmp_path, toy_dir, toy_settings, "full", [full], steps=12)
    with pytest.raises(OSError, match=r"Could not write checkpoint .*step=10.ckpt.*previous file there.*unchanged"):
        main(["fit", "--config", str(config)])
    ckpt = tmp_path / "full" / "ckpt"
    assert _weights(ckpt / "last.ckpt")["global_step"] == 5  # intact, loadable
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch=0-step=5.ckpt", "last.ckpt"]  # no temporary left
    assert not (tmp_path / "full" / "run.lock").exists()  # the failed fit released its folder


@pytest.mark.slow
def test_two_fits_of_one_config_started_together_keep_both_runs(tmp_path, toy_dir, toy_settings, write_config):
    config = write_config(tmp_path / "run", toy_dir, toy_settings, max_steps=4)
    first = _command(config)
    time.sleep(2)
    second = _command(config)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [err[-2000:] for _, err in outputs]
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == ["run", "run-2"]
    assert sum(f"this run writes to {tmp_path / 'run-2'}" in err for _, err in outputs) == 1  # and says so
    for folder in folders:
        assert {"config.yaml", "run_info.json"} <= {p.name for p in (tmp_path / folder).iterdir()}
        assert (tmp_path / folder / "ckpt" / "best.ckpt").is_file() and not (tmp_path / folder / "run.lock").exists()


def test_continuing_a_run_that_is_still_being_written_is_refused(tmp_path, toy_dir, toy_settings, write_config):
    from deeplab_lightning.runs.folder import RunFolderBusy

    config = write_config(tmp_path / "run", toy_dir, toy_settings)
    main(["fit", "--config", str(config)])
    last = tmp_path / "run" / "ckpt" / "last.ckpt"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live process on this machine holds the lock
        (tmp_path / "run" / "run.lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        with pytest.raises(RunFolderBusy, match=r"Another process is writing to .*run.lock"):
            main(["fit", "--config", str(config), "--ckpt_path", str(last), "--trainer.max_steps", "3"])
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone (a killed run): its lock is stale and the run continues
    cli = main(["fit", "--config", str(config), "--ckpt_path", str(last), "--trainer.max_steps", "3"])
    assert cli.run_dir == tmp_path / "run" and cli.trainer.global_step == 3


def test_sigterm_stops_validate_after_the_current_batch_with_status_143(tmp_path, toy_dir, toy_settings, write_config,
                                                                        monkeypatch):
    """A real SIGTERM to this process during the first validation batch (Lightning's handler receives it)."""
    import signal as signals

    from deeplab_lightning.module import SegmentationModule

    step = SegmentationModule.validation_step
    seen = []

    def signalled(module, batch, batch_idx):
        seen.append(batch_idx)
        if batch_idx == 0:
            os.kill(os.getpid(), signals.SIGTERM)
        return step(module, batch, batch_idx)

    monkeypatch.setattr(SegmentationModule, "validation_step", signalled)
    config = write_config(tmp_path / "run", toy_dir, toy_settings)
    with pytest.raises(SystemExit) as stopped:
        main(["validate", "--config", str(config), "--data.init_args.val_batch_size", "1"])
    assert stopped.value.code == 143 and seen == [0]  # 6 validation images: stopped after the first
