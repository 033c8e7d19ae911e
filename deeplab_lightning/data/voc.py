"""PASCAL VOC 2012 segmentation, read through torchvision's VOCSegmentation file lists."""
from __future__ import annotations

from pathlib import Path

from torchvision.datasets import VOCSegmentation

from .base import SegmentationDataModule
from .classes import VOC_CLASSES, voc_palette
from .dataset import Sample

VOC_LAYOUT = """\
{data_dir}/VOCdevkit/VOC2012/
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png          (palette PNGs of class indices, 255 = void)
    ImageSets/Segmentation/<split>.txt  (one id per line)"""


def check_voc_root(data_dir: Path) -> Path:
    """Return ``data_dir/VOCdevkit/VOC2012``, or raise naming the expected layout."""
    root = Path(data_dir) / "VOCdevkit" / "VOC2012"
    missing = [p for p in (root / "JPEGImages", root / "SegmentationClass", root / "ImageSets" / "Segmentation")
               if not p.is_dir()]
    if missing:
        raise FileNotFoundError(
            f"PASCAL VOC not found: {missing[0]} does not exist. Expected this layout under "
            f"data_dir={str(data_dir)!r}:\n{VOC_LAYOUT.format(data_dir=data_dir)}\n"
            f"Download VOCtrainval_11-May-2012.tar and extract it into data_dir, or set data.init_args.data_dir."
        )
    return root


def read_split(list_file: Path) -> list[str]:
    """Ids listed in a split file, one per line; raises if the file is missing or lists nothing."""
    if not list_file.is_file():
        available = sorted(p.stem for p in list_file.parent.glob("*.txt"))
        raise FileNotFoundError(f"Split list {list_file} does not exist (available splits: {available})")
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"Split list {list_file} names no images")
    return ids


def check_files(samples: list[Sample], list_file: Path) -> list[Sample]:
    """Fail at set-up, not deep in a worker, when a listed image or label file is missing."""
    for s in samples:
        for path in (s.image, s.mask):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is listed in {list_file} (id {s.id!r}) but does not exist")
    return samples


class VOCDataModule(SegmentationDataModule):
    """PASCAL VOC 2012 segmentation (21 classes, void label 255).

    Args:
        data_dir: the folder holding ``VOCdevkit/VOC2012``.
        **kwargs: see :class:`SegmentationDataModule` (splits, crop_size=513, scale_range=(0.5, 2.0), ...).

    Splits ``train``, ``val`` and ``trainval`` come from torchvision's ``VOCSegmentation``; any other split
    name is read from ``ImageSets/Segmentation/<split>.txt``.
    """

    class_names = VOC_CLASSES
    palette = tuple(voc_palette())

    def __init__(self, data_dir: str = "data/voc", **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)

    def samples(self, split: str) -> list[Sample]:
        root = check_voc_root(self.data_dir)
        list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if split in ("train", "val", "trainval"):
            read_split(list_file)  # clear errors for a missing or empty list
            tv = VOCSegmentation(str(self.data_dir), year="2012", image_set=split, download=False)
            samples = [Sample(Path(i).stem, Path(i), Path(t)) for i, t in zip(tv.images, tv.targets)]
        else:
            samples = [Sample(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png")
                       for i in read_split(list_file)]
        return check_files(samples, list_file)
