"""The ``deeplab-lightning`` console script: LightningCLI's subcommands (:mod:`.cli`), ``check-data``, ``cache``,
``ablate``, ``export`` and ``convert``, one module each. This dispatcher imports them when called; they import
their shared option helpers from :mod:`.options`, never from here."""
from __future__ import annotations

import difflib
import sys

from .. import __version__

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
        near = difflib.get_close_matches(args[0], SUBCOMMANDS, n=1)
        print(f"deeplab-lightning: error: unknown subcommand {args[0]!r}"
              + (f"; did you mean: deeplab-lightning {near[0]}" if near else "")
              + "\n(deeplab-lightning --help lists the subcommands)", file=sys.stderr)
        sys.exit(2)
    from .errors import reporting_user_errors

    sys.exit(reporting_user_errors(args[0], lambda: _dispatch(args[0], args[1:])))


def _dispatch(command: str, args: list[str]) -> int:
    """Run ``command`` with its arguments; its exit status."""
    if command == "check-data":
        from .check_data import main as check_data_main

        return check_data_main(args)
    if command == "cache":
        from .cache import main as cache_main

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
