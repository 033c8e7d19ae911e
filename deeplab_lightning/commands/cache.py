"""``deeplab-lightning cache``: decode a config's splits once into stores that training reads without decoding.

    deeplab-lightning cache --config experiments/v3_r101_os16_cityscapes_769_90k_bs16.yaml [--splits train val]
                            [--workers 8] [--force]

Each split goes to ``data.init_args.cache_dir/<split>`` (default ``<data_dir>/decoded/<split>``), where fit,
validate and test then find it (see :mod:`deeplab_lightning.data.cache`). Every file is checked as in training;
with any problem nothing is written and each problem is printed with its file. A store that is up to date is
kept (``--force`` rewrites it); an out-of-date one is replaced once the new one is complete.
"""
from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .options import data_command_parser
from ..data.base import SegmentationDataModule
from ..data.cache import is_current, write_split


def _size(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def cache_splits(datamodule: SegmentationDataModule, splits: list[str], workers: int, force: bool = False,
                 console: Console | None = None) -> bool:
    """Write the decoded store of each split; print what was written (size, time) or kept; True without
    problems."""
    console = console or Console()
    datamodule.prepare_data()
    ok = True
    for split in splits:
        folder = datamodule.decoded_dir(split)
        if folder is None:
            console.print(f"[red]problem:[/red] {type(datamodule).__name__} has no data_dir: set "
                          f"data.init_args.cache_dir")
            return False
        try:
            dataset = datamodule.dataset(split, cached=False)
        except (OSError, ValueError) as err:
            console.print(f"[red]problem:[/red] split {split!r}: {err}")
            ok = False
            continue
        if not force and is_current(folder, dataset):
            size = sum(f.stat().st_size for f in folder.iterdir())
            console.print(f"{split}: up to date in {folder} ({len(dataset)} images, {_size(size)}); --force "
                          f"rewrites it")
            continue
        start = time.monotonic()
        with Progress(TextColumn(f"decoding {split}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task(split, total=len(dataset))
            size, problems = write_split(dataset, folder, workers,
                                         progress=lambda done, total: bar.update(task, completed=done))
        for problem in problems:
            console.print(f"[red]problem:[/red] {problem}")
        if problems:
            console.print(f"{split}: {len(problems)} problem(s); nothing written")
            ok = False
            continue
        console.print(f"{split}: {len(dataset)} images decoded into {folder} ({_size(size)} on disk, "
                      f"{time.monotonic() - start:.0f} s)")
    return ok


def main(args: list[str] | None = None) -> int:
    parser = data_command_parser("deeplab-lightning cache", __doc__)
    parser.add_argument("--splits", type=str, nargs="+", default=None,
                        help="e.g. --splits train val (default: the config's training and validation splits)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    parser.add_argument("--force", type=bool, default=False, help="rewrite stores that are up to date")
    cfg = parser.instantiate_classes(parser.parse_args(args))
    splits = cfg.splits or list(dict.fromkeys([cfg.data.train_split, cfg.data.val_split]))
    return 0 if cache_splits(cfg.data, splits, max(1, cfg.workers), cfg.force) else 1


if __name__ == "__main__":
    sys.exit(main())
