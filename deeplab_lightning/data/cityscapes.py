"""Cityscapes (fine annotations), read through torchvision's Cityscapes file lists, labelIds -> trainIds."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from torchvision.datasets import Cityscapes

from .base import SegmentationDataModule
from .classes import CITYSCAPES_CLASSES, CITYSCAPES_LABEL_TO_TRAIN, CITYSCAPES_PALETTE
from .dataset import IGNORE_INDEX, Sample
from .voc import check_files

CITYSCAPES_LAYOUT = """\
{data_dir}/
    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"""


def cityscapes_label_map() -> np.ndarray:
    """A 256-entry lookup table: labelId -> trainId (0-18), every other id -> 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        table[label_id] = train_id
    return table


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes with the 19 evaluated classes (trainIds), ``gtFine`` ``*_labelIds.png`` targets.

    Args:
        data_dir: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        crop_size: the papers crop 769x769 (V3) or 513x513, and mmsegmentation's references 512x1024
            (``[512, 1024]``).
        eval_size: 1025x2049, the TF reference's eval crop for the 1024x2048 frames.
        **kwargs: see :class:`SegmentationDataModule`.

    Validation runs on the full 1024x2048 images.
    """

    class_names = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE

    def __init__(self, data_dir: str = "data/cityscapes", *, crop_size: int | tuple[int, int] = 769,
                 eval_size: int | tuple[int, int] | Literal["auto"] | None = (1025, 2049), **kwargs) -> None:
        super().__init__(crop_size=crop_size, eval_size=eval_size, **kwargs)
        self.data_dir = Path(data_dir)
        self.label_map = cityscapes_label_map()

    def samples(self, split: str) -> list[Sample]:
        for sub in ("leftImg8bit", "gtFine"):
            if not (self.data_dir / sub / split).is_dir():
                raise FileNotFoundError(
                    f"Cityscapes not found: {self.data_dir / sub / split} does not exist. Expected this layout:\n"
                    f"{CITYSCAPES_LAYOUT.format(data_dir=self.data_dir)}\nDownload leftImg8bit_trainvaltest.zip "
                    f"and gtFine_trainvaltest.zip, extract both into data_dir, or set data.init_args.data_dir."
                )
        tv = Cityscapes(str(self.data_dir), split=split, mode="fine", target_type="semantic")
        samples = sorted((Sample(Path(img).name.replace("_leftImg8bit.png", ""), Path(img), Path(target[0]))
                          for img, target in zip(tv.images, tv.targets)), key=lambda s: s.id)
        if not samples:
            raise ValueError(f"Cityscapes split {split!r} under {self.data_dir} holds no images")
        return check_files(samples, self.data_dir / "leftImg8bit" / split)
