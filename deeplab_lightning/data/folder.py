"""Unlabelled images in a folder, for ``deeplab-lightning predict``."""
from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from .base import SegmentationDataModule
from .cityscapes import CityscapesDataModule
from .dataset import Sample
from .toy import ToyVOCDataModule
from .voc import VOCDataModule

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# The label sets a model can have been trained on: their data modules' class names and palettes.
CLASS_SETS = {"voc": VOCDataModule, "cityscapes": CityscapesDataModule, "toy": ToyVOCDataModule}


class ImageFolderDataModule(SegmentationDataModule):
    """Every image file directly in ``image_dir``, predicted at full resolution (``predict`` only).

    Args:
        image_dir: the folder; files that are not images (by suffix) are skipped with a warning naming them.
        classes: the label set the model was trained on, for the number of classes, names and palette:
            ``voc``, ``cityscapes`` or ``toy``.
    """

    def __init__(self, image_dir: str, *, classes: str = "voc", **kwargs) -> None:
        if classes not in CLASS_SETS:
            raise ValueError(f"classes={classes!r} unknown; use one of {sorted(CLASS_SETS)}")
        kwargs.setdefault("test_split", "images")
        super().__init__(**kwargs)
        self.image_dir = Path(image_dir)
        self.class_names, self.palette = CLASS_SETS[classes].class_names, CLASS_SETS[classes].palette

    def samples(self, split: str) -> list[Sample]:
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"Image folder {self.image_dir} does not exist (data.init_args.image_dir)")
        files = sorted(p for p in self.image_dir.iterdir() if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if skipped:
            rank_zero_warn(f"Skipping {len(skipped)} non-image file(s) in {self.image_dir}: {skipped[:10]}")
        if not images:
            raise ValueError(f"{self.image_dir} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [Sample(p.stem, p, None) for p in images]
