"""Checkpoints are written atomically, stale temporaries are removed, and unreadable files are named."""
import json
import os
import subprocess

import lightning as L
import pytest
import torch

from deeplab_lightning.runs.checkpoints import AtomicCheckpointIO
from deeplab_lightning.commands.cli import main

from conftest import REPO


def test_checkpoint_write_is_atomic_and_cleans_up_after_killed_writers(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "state_dict": {"w": torch.ones(1000)}}, path)

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped while writing

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "state_dict": {"w": torch.zeros(1000)}}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # and no temporary file is left

    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that no longer runs: a writer killed with SIGKILL midway
    stale, live = tmp_path / f".last.ckpt.{dead.pid}.tmp", tmp_path / f".last.ckpt.{os.getppid()}.tmp"
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"y")  # another live process writing: left alone
    io.save_checkpoint({"step": 3, "state_dict": {}}, path)
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("content, message", [(b"", r"is empty \(0 bytes\)"),
                                              (b"epoch,step\n1,101\n", "is not a readable PyTorch checkpoint"),
                                              (None, "not a Lightning checkpoint")])
def test_unreadable_checkpoints_are_named(tmp_path, content, message):
    path = tmp_path / "bad.ckpt"
    if content is None:
        torch.save({"weights": torch.ones(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"bad.ckpt.*{message}"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_command_uses_atomic_checkpoints_whatever_the_plugins_and_names_a_bad_ckpt_path(
        tmp_path, toy_dir, toy_settings, write_config):
    config = write_config(tmp_path, toy_dir, toy_settings)
    cli = main(["fit", "--config", str(config),  # a plugin list without a checkpoint IO
                "--trainer.plugins", "lightning.pytorch.plugins.environments.LightningEnvironment"])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["packages"]["lightning"] == L.__version__ and info["packages"]["torch"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert info["git_commit"] == head and info["command"]  # the package is installed editable from this checkout
    assert (tmp_path / "config.yaml").is_file()  # the resolved config, beside it
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["run_info"]["packages"] == info["packages"]

    empty = tmp_path / "empty.ckpt"
    empty.touch()
    with pytest.raises(ValueError, match=r"empty.ckpt is empty"):
        main(["validate", "--config", str(config), "--ckpt_path", str(empty)])
