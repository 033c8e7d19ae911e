"""PASCAL VOC 2012 segmentation (VOC's own layout and split lists; SBD through torchvision's SBDataset)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from torchvision.datasets import SBDataset

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


def read_split(list_file: Path, unique: bool = True) -> list[str]:
    """Ids listed in a split file, one per line (blank lines skipped); raises if the file is missing, lists
    nothing, lists a path instead of a name (outputs named by ids must stay in their folder) or (``unique``)
    lists an id twice: a repeated image would count twice in the metric."""
    if not list_file.is_file():
        available = sorted(p.stem for p in list_file.parent.glob("*.txt"))
        raise FileNotFoundError(f"Split list {list_file} does not exist (available splits: {available})")
    first_line: dict[str, int] = {}
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        sid = line.split()[0]
        if "/" in sid or "\\" in sid or sid in (".", ".."):
            raise ValueError(f"Split list {list_file} line {number}: {sid!r} is a path; a split list names image "
                             f"ids (file names without folder or extension), one per line")
        if unique and sid in first_line:
            raise ValueError(f"Split list {list_file} lists id {sid!r} twice (lines {first_line[sid]} and "
                             f"{number}); remove the repeated line")
        first_line.setdefault(sid, number)
    if not first_line:
        raise ValueError(f"Split list {list_file} names no images")
    return list(first_line)


def check_files(samples: list[Sample], list_file: Path) -> list[Sample]:
    """Fail at set-up, not deep in a worker, when a listed image or label file is missing."""
    for s in samples:
        for path in (s.image, s.mask):
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"{path} is listed in {list_file} (id {s.id!r}) but does not exist")
    return samples


class VOCDataModule(SegmentationDataModule):
    """PASCAL VOC 2012 segmentation (21 classes, void label 255), with SBD's extra annotations.

    Args:
        data_dir: the folder holding ``VOCdevkit/VOC2012``.
        sbd_dir: the folder holding SBD's ``img/``, ``cls/``, ``train.txt`` and ``val.txt`` (for ``train_aug``).
        train_split: ``"train_aug"`` (the papers' 10,582 images), ``"train"`` (1,464) or any list name.
        **kwargs: see :class:`SegmentationDataModule` (crop_size=513, scale_range=(0.5, 2.0), ...).
        eval_size: 513 x 513, the TF reference's eval crop (VOC images are at most 500 x 500).

    Split lists are read strictly (a repeated id is an error naming its lines; torchvision's
    ``VOCSegmentation`` would turn a blank line into an image named ``.jpg``). ``train_aug`` = VOC train
    ∪ SBD train ∪ SBD val, minus VOC val, without duplicates: from the pre-converted
    ``SegmentationClassAug/`` + ``ImageSets/Segmentation/train_aug.txt`` when present, else from ``sbd_dir``
    through torchvision's ``SBDataset`` (VOC's own PNG is used where an image has one). VOC val images are
    always removed from ``train_aug``, whatever its list says. Any other split name is read from
    ``ImageSets/Segmentation/<split>.txt``.
    """

    class_names = VOC_CLASSES
    palette = tuple(voc_palette())
    void_marks_boundaries = True  # VOC 2012's void: a band ~5 px wide along object edges (and difficult objects)

    def __init__(self, data_dir: str = "data/voc", *, sbd_dir: str | None = None, train_split: str = "train_aug",
                 eval_size: int | tuple[int, int] | Literal["auto"] | None = 513, **kwargs) -> None:
        super().__init__(train_split=train_split, eval_size=eval_size, **kwargs)
        self.data_dir = Path(data_dir)
        self.sbd_dir = Path(sbd_dir) if sbd_dir is not None else None

    def train_aug_samples(self, root: Path) -> list[Sample]:
        """VOC train ∪ SBD train ∪ SBD val, minus VOC val (see the class docstring)."""
        lists = root / "ImageSets" / "Segmentation"
        val_ids = set(read_split(lists / "val.txt"))
        aug_dir, aug_list = root / "SegmentationClassAug", lists / "train_aug.txt"
        if aug_dir.is_dir() and aug_list.is_file():
            return [Sample(i, root / "JPEGImages" / f"{i}.jpg", aug_dir / f"{i}.png")
                    for i in read_split(aug_list, unique=False) if i not in val_ids]
        if self.sbd_dir is None:
            raise FileNotFoundError(
                f"train_aug needs SBD: set data.init_args.sbd_dir to the folder holding SBD's img/, cls/, "
                f"train.txt and val.txt, or provide {aug_dir} with {aug_list}; or use train_split: train")
        if not (self.sbd_dir / "cls").is_dir():
            raise FileNotFoundError(f"SBD not found: {self.sbd_dir / 'cls'} does not exist (expected img/, cls/, "
                                    f"train.txt, val.txt under sbd_dir={str(self.sbd_dir)!r})")
        samples: dict[str, Sample] = {}
        for sid in read_split(lists / "train.txt"):
            samples[sid] = Sample(sid, root / "JPEGImages" / f"{sid}.jpg", root / "SegmentationClass" / f"{sid}.png")
        for image_set in ("train", "val"):
            sbd = SBDataset(str(self.sbd_dir), image_set=image_set, mode="segmentation")
            for img, mask in zip(sbd.images, sbd.masks):
                sid = Path(img).stem
                if sid not in samples:
                    voc_png = root / "SegmentationClass" / f"{sid}.png"
                    samples[sid] = Sample(sid, Path(img), voc_png if voc_png.is_file() else Path(mask))
        return [s for sid, s in sorted(samples.items()) if sid not in val_ids]

    def samples(self, split: str) -> list[Sample]:
        root = check_voc_root(self.data_dir)
        list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if split == "train_aug":
            return check_files(self.train_aug_samples(root), list_file)
        samples = [Sample(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png")
                   for i in read_split(list_file)]
        return check_files(samples, list_file)
