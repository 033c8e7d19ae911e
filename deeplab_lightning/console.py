"""The ``deeplab-lightning`` console script: LightningCLI's subcommands, ``check-data``, ``cache``, ``ablate``,
``export`` and ``convert``."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from . import __version__

SUBCOMMANDS = {
    "fit": "train a model: deeplab-lightning fit --config experiments/<experiment>.yaml",
    "validate": "evaluate a checkpoint on the validation split (--ckpt_path)",
    "test": "evaluate a checkpoint on the test split, with the config's multi-scale / flip / CRF",
    "predict": "write predicted label PNGs and overlays for a split or an image folder",
    "check-data": "open every file of a config's dataset; print class shares and every problem",
    "cache": "decode a config's splits once into stores that training reads without decoding",
    "ablate": "train and compare a grid of variants from one YAML (table, CSV, JSON, plots)",
    "export": "write a checkpoint's network as ONNX, TorchScript or a torch.export program",
    "convert": "an official DeepLab checkpoint (TF model zoo, released Caffe model) as a project checkpoint",
}


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

    from .data.base import SegmentationDataModule
    from .errors import ConciseArgumentParser

    prose = [p for p in doc.strip().split("\n\n") if not p.startswith(" ")]
    parser = ConciseArgumentParser(prog=prog, description=help_text(" ".join(prose)))
    parser.add_argument("--config", action=ActionConfigFile, help="an experiment config (its data section is read)")
    parser.add_subclass_arguments(SegmentationDataModule, "data", required=True)
    for ignored in ("trainer", "model", "seed_everything", "ckpt_path"):  # the config's other sections
        parser.add_argument(f"--{ignored}", type=object, default=None, help=SUPPRESS)
    return parser


def usage() -> str:
    names = "{" + ",".join(SUBCOMMANDS) + "}"
    rows = "\n".join(f"  {name:<11} {text}" for name, text in SUBCOMMANDS.items())
    return (f"usage: deeplab-lightning [-h] [--version] {names} ...\n\n"
            f"DeepLab V1, V2, V3 and V3+ for semantic segmentation, on PyTorch Lightning.\n\n"
            f"subcommands (deeplab-lightning <subcommand> --help lists its options):\n{rows}\n\n"
            f"options:\n  -h, --help  show this message and exit\n  --version   show the version and exit")


def console_main() -> None:
    """Dispatch ``sys.argv`` to a subcommand; answer ``--help`` and ``--version`` here."""
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        print(f"deeplab-lightning {__version__}")
        return
    if args[0] not in SUBCOMMANDS:
        print(f"{usage()}\n\ndeeplab-lightning: error: unknown subcommand {args[0]!r}", file=sys.stderr)
        sys.exit(2)
    from .errors import reporting_user_errors

    sys.exit(reporting_user_errors(args[0], lambda: _dispatch(args[0], args[1:])))


def _dispatch(command: str, args: list[str]) -> int:
    """Run ``command`` with its arguments; its exit status."""
    if command == "check-data":
        from .check_data import main as check_data_main

        return check_data_main(args)
    if command == "cache":
        from .cache_data import main as cache_main

        return cache_main(args)
    if command == "ablate":
        from .ablate import main as ablate_main

        return ablate_main(args)
    if command == "export":
        from .export import main as export_main

        return export_main(args)
    if command == "convert":
        from .convert import main as convert_main

        return convert_main(args)
    from .cli import main

    main()
    return 0
