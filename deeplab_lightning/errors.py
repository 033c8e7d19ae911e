"""How the command line reports a user's mistake: one line that says what is wrong, where and how to fix it (the
project's errors name the file or the setting), with the traceback one environment variable away
(``DEEPLAB_TRACEBACK=1``); a mistyped option first, with the nearest valid ones, instead of a usage dump."""
from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from .models.backbones.base import PretrainedWeightsUnavailable
from .run_folder import RunFolderBusy

TRACEBACK_VARIABLE = "DEEPLAB_TRACEBACK"
# What a user's data, files, settings or machine cause; the project raises these naming the file or setting.
# Other exceptions (a bug, a CUDA error) keep their traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, PretrainedWeightsUnavailable, RunFolderBusy)


def reporting_user_errors(command: str, run: Callable[[], Any]) -> Any:
    """``run()``; a user error (see :data:`USER_ERRORS`) exits with status 1 after one line on stderr:
    ``deeplab-lightning <command>: error: <message>``, unless ``DEEPLAB_TRACEBACK=1`` asks for the traceback."""
    try:
        return run()
    except USER_ERRORS as err:
        if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            raise
        print(f"deeplab-lightning {command}: error: {err}  [{TRACEBACK_VARIABLE}=1 shows the traceback]",
              file=sys.stderr)
        sys.exit(1)


def nearest_options(message: str, options: list[str]) -> list[str]:
    """The valid options closest to each ``--key`` or quoted ``'key'`` that ``message`` names (a mistyped
    ``--model.lrr`` or ``model: {lrr: ...}`` -> ``--model.lr``)."""
    near: list[str] = []
    typed_keys = re.findall(r"--[\w.-]+", message) + ["--" + k for k in re.findall(r"'([\w.-]+)'", message)]
    for typed in typed_keys:
        near += [o for o in difflib.get_close_matches(typed, options, n=3, cutoff=0.8) if o not in near]
    return near


class ConciseArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors come first and alone (the nearest valid options after a typo, and the
    command that lists them all), not after a 70-line usage."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
        near = nearest_options(message, options)
        hint = f"\n  did you mean: {', '.join(near)}" if near else ""
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {message}{hint}\n  every option: {prog} --help\n")
        self.exit(2)
