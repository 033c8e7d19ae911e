"""Your own data in folders: images with PNG masks of class indices (fit, validate, test, predict), or
unlabelled images to predict."""
from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from .base import SegmentationDataModule
from .cityscapes import CityscapesDataModule
from .classes import voc_palette
from .dataset import IGNORE_INDEX, Sample, SegmentationDataset
from .decode import decode_labels
from .toy import ToyVOCDataModule
from .voc import VOCDataModule

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# The label sets a model can have been trained on: their data modules' class names and palettes.
CLASS_SETS = {"voc": VOCDataModule, "cityscapes": CityscapesDataModule, "toy": ToyVOCDataModule}


FOLDER_LAYOUT = """\
{data_dir}/
    images/<split>/<name>.jpg   (or .png, .bmp, .tif, .webp: RGB, grayscale or 16-bit)
    masks/<split>/<name>.png    (one per image, same size: 8-bit PNG of class indices 0..N-1, ignore_index = void;
                                 a split without masks/<split>/ is unlabelled: predict only)"""


def _image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix), warning about the other files."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    skipped = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if skipped:
        rank_zero_warn(f"Skipping {len(skipped)} non-image file(s) in {folder}: {skipped[:10]}")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise ValueError(f"{folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def _ids(images: list[Path]) -> list[str]:
    """Each image's id: its stem, or its name when another image has the same stem (a.jpg, a.png)."""
    stems = Counter(p.stem for p in images)
    return [p.stem if stems[p.stem] == 1 else p.name for p in images]


def read_classes(classes: Sequence[str] | str) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    """Class names and palette from a list of names, or from a YAML/JSON file holding either a list of names or
    ``{names: [...], palette: [[r, g, b], ...]}``."""
    if isinstance(classes, str):
        path = Path(classes)
        if not path.is_file():
            raise FileNotFoundError(f"Class file {path} (data.init_args.classes) does not exist; give a YAML/JSON "
                                    f"file with names: [...] (and optionally palette: [[r, g, b], ...]) or a list")
        try:
            spec = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        except (ValueError, yaml.YAMLError) as err:
            raise ValueError(f"Class file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                             f"{' '.join(str(err).split())}") from None
        spec = {"names": spec} if isinstance(spec, list) else spec
        if not isinstance(spec, dict) or not isinstance(spec.get("names"), list) or not spec["names"]:
            raise ValueError(f"Class file {path} must hold a list of class names or names: [...]")
        names, palette = spec["names"], spec.get("palette")
    else:
        names, palette = list(classes), None
    if palette is not None and (len(palette) != len(names) or any(
            not isinstance(c, (list, tuple)) or len(c) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in palette)):
        raise ValueError(f"The palette of {classes} must give one [r, g, b] per class ({len(names)}), each value "
                         f"an integer 0-255")
    repeated = sorted({str(n) for n in names if [str(m) for m in names].count(str(n)) > 1})
    if repeated:
        raise ValueError(f"The classes of {classes} name {', '.join(map(repr, repeated))} more than once: each class "
                         f"needs its own name (reports and wandb tell classes apart by name)")
    return [str(n) for n in names], None if palette is None else [tuple(int(v) for v in c) for c in palette]


def binary_mask_problem(split: str, ignore_index: int) -> str:
    """The message for masks that hold only 0 and the ignore label: the usual 0/255 binary masks."""
    return (f"the masks of split {split!r} hold only 0 and {ignore_index}, the ignore label: the objects would "
            f"never be trained (only background). If {ignore_index} marks your objects, save the masks with 1 for "
            f"them (e.g. numpy: mask // 255) and list two classes, [background, object]")


class FolderDataModule(SegmentationDataModule):
    """Your own dataset: images and masks in per-split folders (layout: :data:`FOLDER_LAYOUT`), for fit,
    validate, test and predict.

    Args:
        data_dir: the folder holding ``images/`` and ``masks/``.
        classes: the class names (index order), or a YAML/JSON file with ``names`` and an optional ``palette``.
        ignore_index: the void label in the masks (excluded from loss and metrics; the command links it into
            the model).
        **kwargs: see :class:`SegmentationDataModule` (``train_split="train"``, ``val_split="val"``,
            ``test_split="val"``, ``crop_size``, ``batch_size`` ...).

    Images and masks are paired by name; an image without its mask, a mask without its image, a mask of
    another size or a label outside the classes is an error naming the file. An image's id (its prediction's
    name) is its stem, or its name when two images share a stem.
    """

    def __init__(self, data_dir: str = "data/my_dataset", *, classes: list[str] | str = "data/my_dataset/classes.yaml",
                 ignore_index: int = IGNORE_INDEX, **kwargs) -> None:
        kwargs.setdefault("crop_size", 321)
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)
        names, palette = read_classes(classes)
        self.class_names = tuple(names)
        self.palette = tuple(palette or voc_palette())
        self.class_file = Path(classes) if isinstance(classes, str) else None
        self.has_palette = palette is not None  # the class file's own colours (else VOC's, for display)
        self.ignore_index = ignore_index

    def train_dataloader(self) -> DataLoader:
        """The training loader, after :meth:`check_masks_are_not_binary_ignore` on the training split."""
        self.check_masks_are_not_binary_ignore(self.dataset(self.train_split, cached=False))
        return super().train_dataloader()

    def check_masks_are_not_binary_ignore(self, dataset: SegmentationDataset, sampled: int = 16) -> None:
        """Raise when ``sampled`` masks spread over the split all hold only 0 and the ignore label, the way binary
        masks are often saved (0/255): training would learn background only, silently. ``check-data`` checks
        every mask (and more)."""
        masks = [s.mask for s in dataset.samples if s.mask is not None]
        picked = masks[:: max(1, len(masks) // sampled)][:sampled]
        values: set[int] = set()
        for path in picked:
            values |= set(np.unique(decode_labels(path)).tolist())
            if values - {0, self.ignore_index}:
                return
        if picked and values == {0, self.ignore_index}:
            raise ValueError(f"{binary_mask_problem(self.train_split, self.ignore_index)} (checked {len(picked)} of "
                             f"{len(masks)} masks in {picked[0].parent}; deeplab-lightning check-data checks all)")

    def samples(self, split: str) -> list[Sample]:
        """The (image, mask) pairs of ``split``; raises naming every unpaired file (see :meth:`paired_samples`)."""
        samples, problems = self.paired_samples(split)
        if problems:
            raise FileNotFoundError("; ".join(problems))
        return samples

    def paired_samples(self, split: str) -> tuple[list[Sample], list[str]]:
        """The samples of ``split`` whose image and mask are both there, and one problem per kind of unpaired
        file (:func:`unpaired_problems`, with what to rename when masks are named otherwise; two images sharing a
        mask), so that ``check-data`` can report them all and still check the pairs."""
        image_dir, mask_dir = self.data_dir / "images" / split, self.data_dir / "masks" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"{image_dir} does not exist. Expected this layout:\n"
                                    f"{FOLDER_LAYOUT.format(data_dir=self.data_dir)}\n(data.init_args.data_dir)")
        images = _image_files(image_dir)
        if not mask_dir.is_dir():
            return [Sample(i, p, None) for i, p in zip(_ids(images), images)], []
        files = sorted(p for p in mask_dir.iterdir() if p.is_file())
        masks = {p.stem: p for p in files if p.suffix.lower() == ".png"}
        problems = unpaired_problems(images, files, image_dir, mask_dir)
        shared = sorted(stem for stem, n in Counter(p.stem for p in images).items() if n > 1)
        if shared:
            problems.append(f"images in {image_dir} share a name and so one mask ({shared[:5]}); rename one")
        paired = [(i, p) for i, p in zip(_ids(images), images) if p.stem in masks and p.stem not in shared]
        return [Sample(i, p, masks[p.stem]) for i, p in paired], problems


def unpaired_problems(images: list[Path], files: list[Path], image_dir: Path, mask_dir: Path) -> list[str]:
    """One problem per kind of unpaired file, listing them: images without a mask ``<name>.png``, PNG masks
    without an image, image files in ``mask_dir`` that are not PNG (only beside images without a mask), and,
    when the unpaired masks are the missing ones under another name, what to rename (:func:`naming_hint`)."""
    masks = {p.stem for p in files if p.suffix.lower() == ".png"}
    stems = {p.stem for p in images}
    missing = [p for p in images if p.stem not in masks]
    unmatched = [p for p in files if p.suffix.lower() == ".png" and p.stem not in stems]
    others = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES - {".png"}] if missing else []
    problems = []
    if missing:
        problems.append(f"{len(missing)} image(s) in {image_dir} have no mask <name>.png in {mask_dir} (a mask has "
                        f"its image's name and the suffix .png, e.g. {missing[0].stem}.png for {missing[0].name}): "
                        f"{_listed([p.name for p in missing])}")
    if unmatched:
        problems.append(f"{len(unmatched)} mask(s) in {mask_dir} have no image in {image_dir}: "
                        f"{_listed([p.name for p in unmatched])}")
    if others:  # harmless beside complete masks, a likely cause beside missing ones
        problems.append(f"{len(others)} file(s) in {mask_dir} are not PNG, and masks are read only as <name>.png: "
                        f"{_listed([p.name for p in others])}")
    hint = naming_hint({p.stem: p for p in missing}, unmatched + others, mask_dir)
    return problems + ([hint] if hint else [])


def _listed(names: Sequence[str], limit: int = 10) -> str:
    """The first ``limit`` of ``names``, comma-separated, then how many more there are."""
    more = f" ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _affix(stem: str, names: set[str]) -> tuple[str, str] | None:
    """The shortest (prefix, suffix) that ``stem`` adds to one of ``names`` (``x_mask`` and {x}: ('', '_mask'));
    None when it extends none of them."""
    found = [("", stem[i:]) for i in range(1, len(stem)) if stem[:i] in names]
    found += [(stem[:i], "") for i in range(1, len(stem)) if stem[i:] in names]
    return min(found, key=lambda affix: len(affix[0]) + len(affix[1]), default=None)


def naming_hint(missing: dict[str, Path], unpaired: list[Path], mask_dir: Path) -> str | None:
    """What to rename when the unpaired mask files are the masks of the images ``missing`` one (by stem) under
    another name: another suffix (``x.jpg``) or a prefix or suffix added to the name (``x_mask.png``); None
    when they are not. The most common pattern is named, with an example and, for a pure rename, the command."""
    names = set(missing)
    patterns: Counter = Counter()
    examples = {}
    for path in unpaired:
        affix = ("", "") if path.stem in names else _affix(path.stem, names)
        if affix is not None and (affix != ("", "") or path.suffix.lower() != ".png"):
            pattern = (*affix, path.suffix)
            patterns[pattern] += 1
            examples.setdefault(pattern, path)
    if not patterns:
        return None
    (prefix, suffix, ext), count = patterns.most_common(1)[0]
    example = examples[(prefix, suffix, ext)]
    image = missing[example.stem[len(prefix): len(example.stem) - len(suffix)]]
    named = f"{ext} files" if not prefix + suffix else f"named {prefix}<name>{suffix}{ext}"
    hint = (f"{count} mask(s) in {mask_dir} are {named} (e.g. {example.name} for the image {image.name}); a mask is "
            f"<name>.png")
    if ext.lower() in (".jpg", ".jpeg"):
        return (f"{hint}: save them again as PNG from their source (JPEG compression changes the class indices "
                f"near edges, so renaming or converting the {ext} files keeps the damage)")
    if ext.lower() != ".png":
        return (f"{hint}: save each as a PNG of class indices (e.g. Pillow: "
                f"Image.open('{example.name}').save('{image.stem}.png'))")
    if not re.fullmatch(r"[\w.-]+", prefix + suffix + ext):  # characters a shell glob would need quoted
        return f"{hint}: rename each to <name>.png"
    rename = (f'for f in *{suffix}{ext}; do mv "$f" "${{f%{suffix}{ext}}}.png"; done' if suffix
              else f'for f in {prefix}*{ext}; do mv "$f" "${{f#{prefix}}}"; done')
    return f"{hint}: rename them, e.g. cd {shlex.quote(str(mask_dir))} && {rename}"


class ImageFolderDataModule(SegmentationDataModule):
    """Every image file directly in ``image_dir``, predicted at full resolution (``predict`` only).

    An image's id (its prediction's file name) is its name without the extension, or with it when another
    image has the same stem (``a.jpg`` and ``a.png`` give ``a.jpg.png`` and ``a.png.png``).

    Args:
        image_dir: the folder; files that are not images (by suffix) are skipped with a warning naming them.
        classes: the label set the model was trained on, for the number of classes, names and palette:
            ``voc``, ``cityscapes``, ``toy``, or a list of names or class file as for :class:`FolderDataModule`.
    """

    def __init__(self, image_dir: str, *, classes: str | list[str] = "voc", **kwargs) -> None:
        kwargs.setdefault("test_split", "images")
        super().__init__(**kwargs)
        self.image_dir = Path(image_dir)
        if isinstance(classes, str) and classes in CLASS_SETS:
            self.class_names, self.palette = CLASS_SETS[classes].class_names, CLASS_SETS[classes].palette
        elif isinstance(classes, str) and not classes.endswith((".yaml", ".yml", ".json")):
            raise ValueError(f"classes={classes!r} unknown; use one of {sorted(CLASS_SETS)}, a list of class names "
                             f"or a YAML/JSON class file")
        else:
            names, palette = read_classes(classes)
            self.class_names, self.palette = tuple(names), tuple(palette or voc_palette())

    def samples(self, split: str) -> list[Sample]:
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"Image folder {self.image_dir} does not exist (data.init_args.image_dir)")
        images = _image_files(self.image_dir)
        return [Sample(i, p, None) for i, p in zip(_ids(images), images)]
