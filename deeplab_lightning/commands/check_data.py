"""``deeplab-lightning check-data``: read every file of a dataset's splits and summarise it.

    deeplab-lightning check-data --config experiments/quickstart.yaml [--splits train val]

Uses the ``data`` section of an experiment config. Every image and label map is opened and checked as in
training (readable, same size, labels in range); the summary lists each split's size and per-class pixel
frequencies, then every problem found, with its file, and what would train a wrong model silently: masks
holding only 0 and the ignore label (binary masks saved as 0/255), a class with no pixel, most pixels ignored.
Unpaired files are listed with the naming rule (and what to rename when masks are named otherwise), RGB colour
masks counted in one line with how to map their colours to classes.
"""
from __future__ import annotations

import sys

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import track
from rich.table import Table

from .options import data_command_parser
from ..data.base import SegmentationDataModule
from ..data.colour_masks import colour_mask_problem, is_colour_mask
from ..data.dataset import SegmentationDataset
from ..data.folder import binary_mask_problem


def class_pixel_counts(dataset: SegmentationDataset, description: str = "") -> tuple[torch.Tensor, int, list[str]]:
    """Pixel count per class (and the ignored count) over a split, and the problems met (one per file)."""
    counts = torch.zeros(dataset.num_classes, dtype=torch.long)
    ignored, problems = 0, []
    for i in track(range(len(dataset)), description=description, transient=True):
        try:
            mask = dataset[i]["mask"]
        except (OSError, ValueError) as err:
            problems.append(str(err))
            continue
        valid = mask != dataset.ignore_index
        ignored += int((~valid).sum())
        counts += torch.bincount(mask[valid], minlength=dataset.num_classes)
    return counts, ignored, problems


IGNORED_SHARE_LIMIT = 0.5  # more ignored pixels than this in a split is reported (VOC: ~6 %)


def label_problems(split: str, counts: torch.Tensor, ignored: int, class_names: list[str],
                   ignore_index: int) -> list[str]:
    """What in a split's label statistics would train a wrong model silently: masks holding only 0 and the
    ignore label, a class with no pixel, most pixels ignored."""
    total = int(counts.sum()) + ignored
    if ignored and int(counts.sum()) == int(counts[0]):
        return [binary_mask_problem(split, ignore_index)]
    problems = [f"class {name!r} (index {i}) has no pixel in split {split!r}: it cannot be learned or measured; "
                f"check the classes, the mask values and the split" for i, name in enumerate(class_names)
                if counts[i] == 0]
    if total and ignored / total > IGNORED_SHARE_LIMIT:
        problems.append(f"{100 * ignored / total:.0f} % of the pixels of split {split!r} are the ignore label "
                        f"{ignore_index}: they are neither trained nor measured; check the mask values and the "
                        f"ignore_index setting")
    return problems


def _paired_files(datamodule: SegmentationDataModule, split: str,
                  err: Exception) -> tuple[SegmentationDataset | None, list[str]]:
    """After ``err`` from reading ``split``: the split's files that pair up (None when none do, or the data module
    cannot list them) and the problems, one per kind of unpaired file where the data module names them."""
    if not hasattr(datamodule, "paired_samples"):
        return None, [str(err)]
    try:
        samples, problems = datamodule.paired_samples(split)
    except (OSError, ValueError):
        return None, [str(err)]
    dataset = SegmentationDataset(samples, datamodule.num_classes, None, datamodule.label_map,
                                  datamodule.ignore_index) if samples else None
    return dataset, problems or [str(err)]


def _without_colour_masks(dataset: SegmentationDataset, split: str,
                          datamodule: SegmentationDataModule) -> tuple[SegmentationDataset | None, list[str]]:
    """The split without its RGB colour masks (None when nothing is left), and one problem that counts them."""
    colour = [s.mask for s in dataset.samples if s.mask is not None and is_colour_mask(s.mask)]
    if not colour:
        return dataset, []
    skipped = set(colour)
    rest = [s for s in dataset.samples if s.mask not in skipped]
    problem = colour_mask_problem(split, colour, datamodule)
    if not rest:
        return None, [problem]
    return SegmentationDataset(rest, dataset.num_classes, None, dataset.label_map, dataset.ignore_index), [problem]


def check_data(datamodule: SegmentationDataModule, splits: list[str], console: Console | None = None) -> bool:
    """Print the summary table and the problems; return True when no problem was found."""
    console = console or Console()
    datamodule.prepare_data()
    table = Table(title=f"{type(datamodule).__name__}: pixel share per class (%)")
    table.add_column("class")
    all_problems = []
    columns = []
    for split in splits:
        try:
            dataset: SegmentationDataset | None = datamodule.dataset(split, cached=False)  # the files themselves
        except (OSError, ValueError) as err:  # unpaired files, a missing split list: report them, check the rest
            dataset, problems = _paired_files(datamodule, split, err)
            all_problems += [f"split {split!r}: {problem}" for problem in problems]
        if dataset is not None:
            dataset, problems = _without_colour_masks(dataset, split, datamodule)
            all_problems += problems
        if dataset is None:
            table.add_column(f"{split} (not read)", justify="right")
            columns.append(["-"] * (datamodule.num_classes + 1))
            continue
        counts, ignored, problems = class_pixel_counts(dataset, f"checking {split}")
        all_problems += problems + label_problems(split, counts, ignored, list(datamodule.class_names),
                                                  datamodule.ignore_index)
        total = max(int(counts.sum()), 1)
        table.add_column(f"{split} ({len(dataset)} images)", justify="right")
        columns.append([f"{100 * c / total:.2f}" for c in counts.tolist()] + [f"{ignored:,} px"])
    for i, name in enumerate([*datamodule.class_names, f"ignored ({datamodule.ignore_index}), pixels"]):
        table.add_row(name, *[column[i] for column in columns])
    console.print(table)
    for problem in all_problems:
        console.print(f"[red]problem:[/red] {escape(problem)}", soft_wrap=True)  # a command in it stays one line
    console.print(f"{len(all_problems)} problem(s) found")
    return not all_problems


def main(args: list[str] | None = None) -> int:
    parser = data_command_parser("deeplab-lightning check-data", __doc__)
    parser.add_argument("--splits", type=str, nargs="+", default=["train", "val"], help="e.g. --splits train val")
    cfg = parser.instantiate_classes(parser.parse_args(args))
    splits = cfg.splits
    if cfg.data.train_split not in splits and splits == ["train", "val"]:
        splits = [cfg.data.train_split, "val"]
    return 0 if check_data(cfg.data, splits) else 1


if __name__ == "__main__":
    sys.exit(main())
