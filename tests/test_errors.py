"""A user's mistake on the command line is one line that names it and the fix (the traceback behind
DEEPLAB_TRACEBACK=1), and a mistyped option comes first with the nearest valid ones, not after a usage dump."""
import sys
from pathlib import Path

import pytest

from deeplab_lightning.console import console_main
from deeplab_lightning.errors import nearest_options

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
