"""A user's mistake on the command line is one line that names it and the fix (the traceback behind
DEEPLAB_TRACEBACK=1), and a mistyped option comes first with the nearest valid ones, not after a usage dump."""
import os
import subprocess
import sys
from pathlib import Path

from deeplab_lightning.errors import nearest_options

CONFIG = str(Path(__file__).parents[1] / "experiments" / "quickstart.yaml")


def command(*args, cwd, traceback=False):
    env = {**os.environ, "DEEPLAB_TRACEBACK": "1" if traceback else "", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "deeplab_lightning", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_an_expected_error_is_one_line_and_the_traceback_is_one_variable_away(tmp_path):
    missing = tmp_path / "best.ckpt"
    done = command("validate", "--config", CONFIG, "--ckpt_path", str(missing), cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("deeplab-lightning validate: error: ") and str(missing) in lines[0]
    assert "DEEPLAB_TRACEBACK=1" in lines[0]
    again = command("validate", "--config", CONFIG, "--ckpt_path", str(missing), cwd=tmp_path, traceback=True)
    assert again.returncode == 1 and "Traceback (most recent call last)" in again.stderr


def test_a_mistyped_option_comes_first_with_the_nearest_valid_keys(tmp_path):
    done = command("fit", "--config", CONFIG, "--model.lrr", "0.1", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "deeplab-lightning fit: error: unrecognized arguments: --model.lrr 0.1"
    assert "did you mean: --model.lr" in lines[1] and len(lines) == 3  # no usage dump
    assert not (tmp_path / "runs").exists()  # nothing made for a command that did not run
    assert nearest_options("Subcommand 'fit' does not accept option 'model.lrr'", ["--model.lr", "--data"]) == [
        "--model.lr"]
