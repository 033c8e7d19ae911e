"""Prediction files: class-index PNGs and overlays with a legend (SegmentationWriter, overlay, legend)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console

from ..data.classes import flat_palette, voc_palette
from ..runs.folder import release_lock, take_lock


def save_whole(image: Image.Image, path: Path, **options: Any) -> None:
    """Save ``image`` to ``path`` through a temporary file renamed at the end (never a truncated file); a failed
    write (a full disk, no permission) is an ``OSError`` naming the file and the fix."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        image.save(tmp, **options)
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(err.errno, f"Cannot write prediction {path} ({err.strerror or err}); free space on its disk "
                                 f"or choose another --output_dir") from err
    finally:
        tmp.unlink(missing_ok=True)


def legend(labels: np.ndarray, names: Sequence[str], palette: np.ndarray, width: int) -> np.ndarray:
    """A strip [h, width, 3] naming the classes present in ``labels``, each beside a swatch of its colour."""
    present = [int(c) for c in np.unique(labels) if c < len(names)]
    row, swatch = 14, 10
    font = ImageFont.load_default()
    entries = [(palette[c], names[c]) for c in present]
    widths = [swatch + 4 + int(font.getlength(name)) + 12 for _, name in entries]
    lines, x = [[]], 0
    for entry, w in zip(entries, widths):
        if x + w > width and lines[-1]:
            lines.append([])
            x = 0
        lines[-1].append((entry, x))
        x += w
    strip = Image.new("RGB", (width, row * len(lines) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        y = 2 + i * row
        for (colour, name), x in line:
            draw.rectangle([x + 2, y + 1, x + 2 + swatch, y + 1 + swatch], fill=tuple(int(v) for v in colour),
                           outline=(0, 0, 0))
            draw.text((x + swatch + 6, y), name, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            names: Sequence[str] | None = None) -> np.ndarray:
    """Side by side: the image [H,W,3] uint8 and the image blended with the coloured labels -> [H, 2W, 3];
    with ``names``, a legend of the classes present below -> [H + legend, 2W, 3]."""
    colours = palette[labels]
    blended = (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).astype(np.uint8)
    pair = np.concatenate([image, blended], axis=1)
    if names is None:
        return pair
    return np.concatenate([pair, legend(labels, names, palette, pair.shape[1])], axis=0)


LOCK = "predict.lock"  # held while a predict command writes into the folder

class SegmentationWriter(BasePredictionWriter):
    """Writes each prediction of ``predict`` as ``<output_dir>/<id>.png`` (a palette PNG of class indices, in
    the data module's palette) and ``<output_dir>/overlays/<id>.jpg`` (image | coloured overlay, with a legend of
    the classes present).

    Nothing is overwritten: before the first image it refuses (naming the files) to write into a folder of input
    images or outside ``output_dir`` (an id that is a path), two images that would write the same file, and files
    already there from an earlier prediction unless ``overwrite`` is set. One ``predict`` at a time writes into a
    folder (``predict.lock``): a second one started meanwhile is refused, naming the first.
    """

    def __init__(self, output_dir: str = "predictions", overlays: bool = True, alpha: float = 0.5,
                 overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.overlays = overlays
        self.alpha = alpha
        self.overwrite = overwrite

    def outputs(self, sample_id: str) -> list[Path]:
        """The files written for one image."""
        paths = [self.output_dir / f"{sample_id}.png"]
        return paths + [self.output_dir / "overlays" / f"{sample_id}.jpg"] if self.overlays else paths

    def check_outputs(self, samples: Sequence) -> None:
        """Raise, before anything is written, if writing ``samples`` (with ``id``, ``image``, ``mask``) would
        replace an input, another prediction of this run, or (without ``overwrite``) an earlier one."""
        inputs = {Path(p).resolve() for s in samples for p in (s.image, s.mask) if p is not None}
        input_folders, root = {p.parent for p in inputs}, self.output_dir.resolve()
        planned: dict[Path, str] = {}
        for s in samples:
            for path in self.outputs(s.id):
                path = path.resolve()
                if not path.is_relative_to(root):
                    raise ValueError(f"Image id {s.id!r} would write {path}, outside the output folder "
                                     f"{self.output_dir}: ids are names, not paths; fix the split list")
                if path.parent in input_folders:
                    raise FileExistsError(f"Predictions would be written into {path.parent}, a folder of input "
                                          f"images: choose another --output_dir (predictions must never mix with "
                                          f"or replace inputs)")
                if path in inputs:
                    raise FileExistsError(f"Prediction {path} would replace an input file: choose another "
                                          f"--output_dir")
                if path in planned:
                    raise FileExistsError(f"Images {planned[path]!r} and {s.id!r} would both be written to "
                                          f"{path}; rename one")
                planned[path] = s.id
        if not self.overwrite:
            existing = [p for p in planned if p.exists()]
            if existing:
                raise FileExistsError(f"{len({planned[p] for p in existing})} images already have predictions in "
                                      f"{self.output_dir} (e.g. {existing[0]}); pass --overwrite true to replace "
                                      f"them or choose another --output_dir")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage != "predict" or not trainer.is_global_zero:
            return
        samples = datamodule.samples(datamodule.test_split) if hasattr(datamodule, "samples") else None
        if samples is not None:  # before the lock file: the folder may be one of inputs
            self.check_outputs(samples)
        take_lock(self.output_dir / LOCK, f"the predictions in {self.output_dir}")  # one writer at a time
        try:
            if samples is not None:  # again: another predict may have written here meanwhile
                self.check_outputs(samples)
        except BaseException:
            release_lock(self.output_dir / LOCK)
            raise

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        release_lock(self.output_dir / LOCK)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        release_lock(self.output_dir / LOCK)

    @rank_zero_only
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        what = "PNG class indices and overlays" if self.overlays else "PNG class indices"
        Console(stderr=True, soft_wrap=True).print(f"Predictions ({what}) written to {self.output_dir}")

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: list[torch.Tensor],
                           batch_indices, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        flat = flat_palette(list(getattr(trainer.datamodule, "palette", None) or voc_palette()))
        palette = np.asarray(flat, np.uint8).reshape(256, 3)
        (self.output_dir / "overlays" if self.overlays else self.output_dir).mkdir(parents=True, exist_ok=True)
        for sample_id, labels, raw in zip(batch["id"], prediction, batch["image"]):
            labels = labels.cpu().numpy().astype(np.uint8)
            png = Image.fromarray(labels, mode="L").convert("P")
            png.putpalette(flat)
            png_path, *overlay_path = self.outputs(sample_id)
            save_whole(png, png_path)
            if overlay_path:
                h, w = labels.shape
                image = raw[:, :h, :w].permute(1, 2, 0).cpu().numpy()
                names = getattr(trainer.datamodule, "class_names", None) or pl_module.class_names
                save_whole(Image.fromarray(overlay(image, labels, palette, self.alpha, names)), overlay_path[0],
                           quality=90)
