"""Colour masks: RGB images that draw each class in its colour instead of storing its index. ``check-data`` names
them (:func:`colour_mask_problem`); :func:`convert_colour_masks` maps them to class indices through the palette of
the folder's class file:

    python -c "from deeplab_lightning.data import convert_colour_masks; convert_colour_masks('data/my_dataset')"
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .classes import flat_palette
from .dataset import IGNORE_INDEX

Colour = tuple[int, int, int]


def is_colour_mask(path: Path) -> bool:
    """Whether ``path`` is an RGB(A) image (read from its header): colours, not class indices. An unreadable file
    is not: reading it names the problem."""
    try:
        with Image.open(path) as image:
            return image.mode in ("RGB", "RGBA")
    except (OSError, ValueError, Image.DecompressionBombError):  # a huge file is named where it is decoded
        return False


def convert_command(data_dir: Path, class_file: Path | None) -> str:
    """The shell command that converts the colour masks of ``data_dir`` through ``class_file``'s palette."""
    classes = "" if class_file is None or class_file == data_dir / "classes.yaml" else f", classes='{class_file}'"
    return (f"python -c \"from deeplab_lightning.data import convert_colour_masks; "
            f"convert_colour_masks('{data_dir}'{classes})\"")


def colour_mask_problem(split: str, masks: list[Path], datamodule: Any) -> str:
    """One line for the colour masks of ``split``: how many, an example, and the fix: the conversion command when
    the data module's class file has a palette, else saving class indices (or adding the palette)."""
    line = (f"{len(masks)} mask(s) of split {split!r} are RGB colour images, not class indices (e.g. {masks[0]})")
    data_dir, class_file = getattr(datamodule, "data_dir", None), getattr(datamodule, "class_file", None)
    if data_dir is None or not hasattr(datamodule, "class_file"):  # a dataset's own layout (VOC, Cityscapes)
        return f"{line}: save each as an 8-bit palette or grayscale PNG of class indices"
    command = convert_command(Path(data_dir), class_file)
    if getattr(datamodule, "has_palette", False):
        return (f"{line}: {class_file} has a palette, so map each colour to its class (in place, as palette PNGs "
                f"that show the same colours) with: {command}")
    where = class_file or f"{Path(data_dir) / 'classes.yaml'} (and set data.init_args.classes to it)"
    return (f"{line}: save each as an 8-bit PNG of class indices, or add palette: [[r, g, b], ...] (each class's "
            f"colour, in class order) to {where} and run: {command}")


def colours_to_labels(rgb: np.ndarray, colours: dict[Colour, int]) -> tuple[np.ndarray, list[Colour]]:
    """Labels uint8 [H, W] of an RGB array [H, W, 3] through ``colours`` (colour -> label), and the colours found
    that it does not map (their pixels are 0)."""
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    values, inverse = np.unique(codes, return_inverse=True)
    found = [((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in values.tolist()]
    lookup = np.array([colours.get(c, 0) for c in found], dtype=np.uint8)
    return lookup[inverse].reshape(codes.shape), [c for c in found if c not in colours]


def _write_palette_png(labels: np.ndarray, palette: list[Colour], path: Path) -> None:
    """``labels`` as an 8-bit palette PNG at ``path``, written whole (a temporary file renamed)."""
    image = Image.fromarray(labels)
    image.putpalette(flat_palette(palette))  # an 'L' image becomes 'P': indices stored, colours shown
    temporary = path.with_name(f".{path.name}.converting")
    try:
        image.save(temporary, format="PNG")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def convert_colour_masks(data_dir: str | Path, classes: str | Path | None = None, *,
                         ignore_colour: Colour | None = None, ignore_index: int = IGNORE_INDEX) -> int:
    """Rewrite every RGB(A) mask ``<data_dir>/masks/<split>/*.png`` as a palette PNG of class indices: the
    colour of class ``i`` in the palette of ``classes`` (default ``<data_dir>/classes.yaml``) becomes ``i``, and
    ``ignore_colour`` (e.g. VOC's void (224, 224, 192)) ``ignore_index``. The file's palette is those colours, so
    it shows what it showed (alpha dropped). A mask holding a colour that maps to nothing is left as it was and,
    after the others are converted, raises naming it and its colours. Returns the number converted."""
    from .folder import read_classes

    data_dir = Path(data_dir)
    class_file = Path(classes) if classes is not None else data_dir / "classes.yaml"
    _, palette = read_classes(str(class_file))
    if palette is None or len(set(palette)) < len(palette):
        raise ValueError(f"{class_file} needs a palette giving each class its own colour to map colour masks: add "
                         f"palette: [[r, g, b], ...] (one colour per class, in class order)")
    colours = {colour: i for i, colour in enumerate(palette)}
    shown = list(palette) + [(0, 0, 0)] * (256 - len(palette))
    if ignore_colour is not None:
        colours[tuple(ignore_colour)], shown[ignore_index] = ignore_index, tuple(ignore_colour)
    converted, failed = 0, []
    for path in sorted(p for p in (data_dir / "masks").glob("*/*") if p.suffix.lower() == ".png"):
        if not is_colour_mask(path):
            continue
        with Image.open(path) as image:
            labels, unknown = colours_to_labels(np.asarray(image.convert("RGB")), colours)
        if unknown:
            failed.append(f"{path} {unknown[:5]}")
            continue
        _write_palette_png(labels, shown, path)
        converted += 1
    if failed:
        raise ValueError(f"{len(failed)} mask(s) hold colours that are not in the palette of {class_file}, and were "
                         f"left as they were: {'; '.join(failed[:5])}; add each class's colour to the palette, or "
                         f"pass ignore_colour=(r, g, b) for the void colour ({converted} converted)")
    return converted
