"""A user's mistake on the command line is one line that names it and the fix (the traceback behind
DEEPLAB_TRACEBACK=1), also from a data-loader worker; a bug keeps its traceback, even as a ValueError; and a mistyped
option comes first with the nearest valid ones, not after a usage dump."""
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

from deeplab_lightning.commands import console_main
from deeplab_lightning.data.dataset import read_image
from deeplab_lightning.commands.errors import nearest_options

CONFIG = str(Path(__file__).parents[1] / "experiments" / "quickstart.yaml")


def command(monkeypatch, *args):
    """``deeplab-lightning ARGS`` as the console script runs it; its exit status."""
    monkeypatch.setattr(sys, "argv", ["deeplab-lightning", *args])
    with pytest.raises(SystemExit) as exit_info:
        console_main()
    return exit_info.value.code


def test_an_expected_error_is_one_line_and_the_traceback_is_one_variable_away(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    missing = tmp_path / "best.ckpt"
    monkeypatch.delenv("DEEPLAB_TRACEBACK", raising=False)
    assert command(monkeypatch, "validate", "--config", CONFIG, "--ckpt_path", str(missing)) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("deeplab-lightning validate: error: ") and str(missing) in lines[0]
    assert "DEEPLAB_TRACEBACK=1" in lines[0]
    monkeypatch.setenv("DEEPLAB_TRACEBACK", "1")
    monkeypatch.setattr(sys, "argv", ["deeplab-lightning", "validate", "--config", CONFIG, "--ckpt_path", str(missing)])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        console_main()
    assert not (tmp_path / "runs").exists()  # nothing made for a command that did not run


def test_a_mistyped_option_comes_first_with_the_nearest_valid_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert command(monkeypatch, "fit", "--config", CONFIG, "--model.lrr", "0.1") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "deeplab-lightning fit: error: unrecognized arguments: --model.lrr 0.1"
    assert "did you mean: --model.lr" in lines[1] and len(lines) == 3  # no usage dump
    assert not (tmp_path / "runs").exists()
    assert nearest_options("Subcommand 'fit' does not accept option 'model.lrr'", ["--model.lr", "--data"]) == [
        "--model.lr"]


def test_a_bug_keeps_its_traceback_even_as_a_value_error(tmp_path, monkeypatch, capsys, toy_dir, toy_settings,
                                                          write_config):
    """A ValueError raised inside torch (not by a `raise` of this package) or a ZeroDivisionError planted in a
    command is a bug: it propagates with its traceback, no one-line "error:" hides it; the package's own
    error in the same command stays one line."""
    import torch

    import deeplab_lightning.commands.check_data

    config = str(write_config(tmp_path, toy_dir, toy_settings))
    monkeypatch.delenv("DEEPLAB_TRACEBACK", raising=False)
    planted = {"torch": lambda: torch.nn.functional.interpolate(torch.zeros(1, 1, 2, 2), size=(1,)),
               "division": lambda: 1 / 0}
    for bug, expected in (("torch", ValueError), ("division", ZeroDivisionError)):
        monkeypatch.setattr(deeplab_lightning.commands.check_data, "check_data", lambda *args, bug=bug: planted[bug]())
        monkeypatch.setattr(sys, "argv", ["deeplab-lightning", "check-data", "--config", config])
        with pytest.raises(expected) as raised:
            console_main()
        frames = traceback.extract_tb(raised.value.__traceback__)
        assert frames[-1].filename.endswith(("torch/nn/functional.py", "test_errors.py")), frames[-1]
        assert "error:" not in capsys.readouterr().err
    missing = tmp_path / "missing"  # the package's own ValueError, raised for the user: one line
    monkeypatch.setattr(deeplab_lightning.commands.check_data, "check_data", lambda *args: read_image(missing))
    assert command(monkeypatch, "check-data", "--config", config) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"deeplab-lightning check-data: error: Image {missing} does not")


def test_a_data_loader_worker_error_is_one_line_when_the_package_raised_it(tmp_path, monkeypatch, capsys,
                                                                           toy_dir, toy_settings, write_config):
    """torch re-raises a worker's error with the worker's whole traceback as its message: the package's error is
    reported as its own one line, a bug in the worker keeps the traceback."""
    import torch

    import deeplab_lightning.commands.check_data

    class Reading(torch.utils.data.Dataset):
        def __init__(self, read):
            self.read = read

        def __len__(self):
            return 1

        def __getitem__(self, index):
            return self.read()

    missing = tmp_path / "missing.jpg"
    user_error = Reading(lambda: read_image(missing))
    bug = Reading(lambda: np.zeros(3).reshape(2))  # numpy's ValueError, raised in the worker

    def load_in_a_worker(dataset):
        return lambda *args: next(iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1)))

    config = str(write_config(tmp_path, toy_dir, toy_settings))
    monkeypatch.delenv("DEEPLAB_TRACEBACK", raising=False)
    monkeypatch.setattr(deeplab_lightning.commands.check_data, "check_data", load_in_a_worker(user_error))
    assert command(monkeypatch, "check-data", "--config", config) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"deeplab-lightning check-data: error: Image {missing} does not exist; check the path  "
                     f"[DEEPLAB_TRACEBACK=1 shows the traceback]"], lines
    monkeypatch.setattr(deeplab_lightning.commands.check_data, "check_data", load_in_a_worker(bug))
    monkeypatch.setattr(sys, "argv", ["deeplab-lightning", "check-data", "--config", config])
    with pytest.raises(ValueError, match=r"Caught ValueError in DataLoader worker process 0(.|\n)*reshape"):
        console_main()
    assert "error:" not in capsys.readouterr().err


def test_a_slurm_submission_without_sbatch_is_one_line_with_the_way_out(tmp_path, monkeypatch, capsys, toy_dir,
                                                                       toy_settings, write_config):
    """``ablate FILE --slurm`` on a machine without SLURM: the scripts are written, the submission is one line
    naming sbatch and --no_submit (not a traceback)."""
    base = write_config(tmp_path / "base", toy_dir, toy_settings)
    ablation = tmp_path / "grid.yaml"
    ablation.write_text(f"base: {base}\noutput_dir: {tmp_path / 'out'}\ngrid: {{model.output_stride: [16, 8]}}\n")
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no sbatch on it
    monkeypatch.delenv("DEEPLAB_TRACEBACK", raising=False)
    assert command(monkeypatch, "ablate", str(ablation), "--slurm", "--no_estimate") == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("deeplab-lightning ablate: error: sbatch is not installed here") and \
        "--no_submit" in lines[-1], lines
    assert list((tmp_path / "out" / "slurm").glob("*.sbatch"))  # what it could do, it did


def test_a_missing_or_foreign_checkpoint_is_one_line_in_every_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("DEEPLAB_TRACEBACK", raising=False)
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    for args, expected in [(["export", "--ckpt_path", "nope.ckpt"], "Checkpoint nope.ckpt does not exist"),
                           (["predict", "--config", CONFIG, "--ckpt_path", "nope.ckpt"], "nope.ckpt does not exist"),
                           (["export", "--ckpt_path", "notes.txt"], "notes.txt is not a readable PyTorch checkpoint")]:
        assert command(monkeypatch, *args) == 1, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, lines)
        assert "unsafe" not in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "predictions").exists()


@pytest.mark.parametrize("args, nearest", [(["ablate", "grid.yaml", "--dryrun"], "--dry_run"),
                                           (["export", "--ckpt_path", "x.ckpt", "--fromat", "onnx"], "--format"),
                                           (["convert", "model.ckpt", "--output", "x.ckpt", "--overwite"], "--overwrite")])
def test_a_mistyped_option_of_ablate_export_or_convert_comes_first_with_the_nearest(args, nearest, monkeypatch,
                                                                                    capsys):
    assert command(monkeypatch, *args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"deeplab-lightning {args[0]}: error: unrecognized arguments")
    assert lines[1] == f"  did you mean: {nearest}" and lines[2] == f"  every option: deeplab-lightning {args[0]} --help"
