"""What the subcommands' parsers share: errors as one line with the nearest options, true/false options, help text
from docstrings, the ``--config`` / ``--data`` parser of the commands that read a config's data section."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any, NoReturn

from .errors import nearest_options


class CommandParser(argparse.ArgumentParser):
    """``argparse`` for the subcommands LightningCLI does not parse (ablate, export, convert): an error comes first
    and alone, with the nearest valid options after a typo and the command that lists them all."""

    def error(self, message: str) -> NoReturn:
        options = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        near = [o for o in nearest_options(message, options) if o not in message.split()]  # not a valid one named
        hint = f"\n  did you mean: {', '.join(near)}" if near else ""
        sys.stderr.write(f"{self.prog}: error: {message}{hint}\n  every option: {self.prog} --help\n")
        self.exit(2)


def boolean_option(text: str) -> bool:
    """An option's true/false value as the subcommands spell it (``--overwrite true``, ``yes``, ``1`` ...)."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def help_text(doc: str) -> str:
    """A module docstring as a terminal shows it: ``code`` and Sphinx roles (:mod:`.local`) as plain text."""
    doc = re.sub(r":\w+:`~?\.*([^`]+)`", r"\1", doc)
    return doc.replace("``", "")


def data_command_parser(prog: str, doc: str) -> Any:
    """The parser of a command that reads a config's ``data`` section (check-data, cache): ``--config`` and
    ``--data``, the config's other sections accepted and left out of ``--help``; errors as the other commands
    give them. ``doc``'s prose paragraphs are the description (its indented usage lines are left out)."""
    from argparse import SUPPRESS

    from jsonargparse import ActionConfigFile

    from ..data.base import SegmentationDataModule
    from .errors import ConciseArgumentParser

    prose = [p for p in doc.strip().split("\n\n") if not p.startswith(" ")]
    parser = ConciseArgumentParser(prog=prog, description=help_text(" ".join(prose)))
    parser.add_argument("--config", action=ActionConfigFile, help="an experiment config (its data section is read)")
    parser.add_subclass_arguments(SegmentationDataModule, "data", required=True)
    for ignored in ("trainer", "model", "seed_everything", "ckpt_path"):  # the config's other sections
        parser.add_argument(f"--{ignored}", type=object, default=None, help=SUPPRESS)
    return parser
