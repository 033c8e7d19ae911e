"""How the command line reports a user's mistake: one line that says what is wrong, where and how to fix it (the
project's errors name the file or the setting), with the traceback one environment variable away
(``DEEPLAB_TRACEBACK=1``); a mistyped option first, with the nearest valid ones, instead of a usage dump. A bug
(an error the project did not raise for the user) keeps its traceback."""
from __future__ import annotations

import difflib
import dis
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from ..models.backbones.base import PretrainedWeightsUnavailable
from ..runs.folder import RunFolderBusy

TRACEBACK_VARIABLE = "DEEPLAB_TRACEBACK"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # deeplab_lightning/
# The project's own errors: always the user's data, files, settings or machine, named with the fix.
PROJECT_ERRORS: tuple[type[BaseException], ...] = (PretrainedWeightsUnavailable, RunFolderBusy)
# The kinds a user error may have. A ValueError or OSError is the user's only where a `raise` statement of this
# package raised it (its message names the file or setting), or, for an OSError, where the OS raised it (it has
# an errno: a missing file, a full disk, a permission). Raised elsewhere (numpy or torch deep inside, a bug) it
# keeps its traceback, as do all other exceptions (TypeError, KeyError, a CUDA error).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, *PROJECT_ERRORS)
# How torch re-raises an error of a data-loader worker: the worker's traceback as text, in the message.
WORKER_ERROR = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback \(most recent call "
                          r"last\):\n")
TRACEBACK_FRAME = re.compile(r'^  File "(?P<file>[^"\n]+)", line \d+, in [^\n]*\n    (?P<code>[^\n]*)\n'
                             r"(?:[ ~^]*[~^][ ~^]*\n)*", re.M)


def reporting_user_errors(command: str, run: Callable[[], Any]) -> Any:
    """``run()``; a user error (see :data:`USER_ERRORS`) exits with status 1 after one line on stderr:
    ``deeplab-lightning <command>: error: <message>``, unless ``DEEPLAB_TRACEBACK=1`` asks for the traceback.
    Any other exception, a bug, propagates with its traceback."""
    try:
        return run()
    except USER_ERRORS as err:
        message = user_error_message(err)
        if message is None or os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            raise
        print(f"deeplab-lightning {command}: error: {message}  [{TRACEBACK_VARIABLE}=1 shows the traceback]",
              file=sys.stderr)
        sys.exit(1)


def user_error_message(err: BaseException) -> str | None:
    """What to report of ``err`` in one line where it is a user error (see :data:`USER_ERRORS`; from a data-loader
    worker, the worker's own error decides and gives the message); None for a bug."""
    if isinstance(err, PROJECT_ERRORS):
        return str(err)
    if not isinstance(err, (ValueError, OSError)):
        return None
    worker = worker_origin(err)
    if worker is not None:
        file, code, message = worker
        deliberate = in_package(file) and code.startswith("raise")
        return message if deliberate or (isinstance(err, OSError) and message.startswith("[Errno ")) else None
    from_os = isinstance(err, OSError) and err.errno is not None
    return str(err) if from_os or raised_by_package(err.__traceback__) else None


def innermost(tb: TracebackType) -> TracebackType:
    """The last entry of a traceback: the frame that raised."""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def in_package(filename: str) -> bool:
    """Whether ``filename`` is a source file of this package."""
    return Path(filename).resolve().is_relative_to(PACKAGE_DIR)


def raised_by_package(tb: TracebackType | None) -> bool:
    """Whether the exception of traceback ``tb`` was raised by a ``raise`` statement of this package, not by a
    function it called (a ValueError of ``int()`` or numpy's C code is raised at the call)."""
    if tb is None:
        return False
    last = innermost(tb)
    code = last.tb_frame.f_code
    ops = {i.offset: i.opname for i in dis.get_instructions(code)}
    return in_package(code.co_filename) and ops.get(last.tb_lasti) == "RAISE_VARARGS"


def worker_origin(err: BaseException) -> tuple[str, str, str] | None:
    """For an error torch re-raised from a data-loader worker: the file and source line that raised it in the
    worker, and its own message; None for any other error."""
    text = str(err)
    if not WORKER_ERROR.match(text):
        return None
    last = text.rsplit("Traceback (most recent call last):\n", 1)[-1]  # the final exception of a chain
    frames = list(TRACEBACK_FRAME.finditer(last))
    if not frames:
        return None
    rest = last[frames[-1].end():].strip()  # "<type>: <message>"
    message = rest.split(": ", 1)[1] if ": " in rest else rest
    return frames[-1]["file"], frames[-1]["code"].strip(), message


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
