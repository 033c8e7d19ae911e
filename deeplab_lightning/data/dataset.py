"""A dataset of (image file, label PNG) pairs with strict checks, and a padding collate function."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .decode import EXIF_ORIENTATION, decode_image, decode_labels, image_size, pil_to_rgb, to_uint8

IGNORE_INDEX = 255  # the void label of VOC and Cityscapes; data modules may declare another


@dataclass(frozen=True)
class Sample:
    """One image of a split: its id, image file and label file (None for unlabelled images to predict)."""

    id: str
    image: Path
    mask: Path | None


def read_image(path: Path) -> torch.Tensor:
    """RGB uint8 [3, H, W] of an image file, as :func:`~deeplab_lightning.data.decode.decode_image` reads it."""
    return torch.from_numpy(decode_image(path)).permute(2, 0, 1).contiguous()


def image_tensor(image: str | Path | Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """RGB uint8 [3, H, W] from a file path (as :func:`read_image`), a PIL image, an array [H, W, 3] or [H, W], or
    a tensor [3, H, W] (RGBA [H, W, 4] / [4, H, W]: alpha dropped, as Pillow converts RGBA to RGB); values of
    another type are converted where their scale is unambiguous (see :func:`~deeplab_lightning.data.decode.to_uint8`:
    floats in [0, 1] are scaled by 255) and refused otherwise, naming the shape or range."""
    if isinstance(image, (str, Path)):
        return read_image(Path(image))
    if isinstance(image, Image.Image):
        return torch.from_numpy(pil_to_rgb(image)).permute(2, 0, 1).contiguous()
    if isinstance(image, torch.Tensor):
        if image.ndim == 3 and image.shape[0] == 4:  # RGBA: alpha dropped, as for a PIL image or file
            image = image[:3]
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"Expected an image tensor [3, H, W], got shape {list(image.shape)}"
                             + (" (channels last: pass image.permute(2, 0, 1))" if image.ndim == 3
                                and image.shape[-1] == 3 else ""))
        if image.dtype == torch.uint8:
            return image
        return torch.from_numpy(to_uint8(image.detach().cpu().numpy(), "image tensor")).to(image.device)
    if isinstance(image, np.ndarray):
        array = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
        if array.ndim == 3 and array.shape[2] == 4:  # RGBA: alpha dropped, as for a PIL image or file
            array = array[..., :3]
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"Expected an RGB(A) array [H, W, 3 or 4] or [H, W], got shape {list(image.shape)}")
        array = to_uint8(array, "image array")
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
    raise TypeError(f"Expected a path, PIL image, RGB array [H, W, 3] or tensor [3, H, W], got {type(image)}")


def checked_labels(labels: np.ndarray, path: Path | str, num_classes: int, label_map: np.ndarray | None = None,
                   ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Labels uint8 [H, W] mapped through ``label_map`` (a 256-entry lookup table: raw ids to train ids, as
    Cityscapes needs) and checked: any label outside [0, num_classes) other than ``ignore_index`` raises,
    naming the file ``path``: a silently wrong label is worse than a crash."""
    if label_map is not None:
        labels = cv2.LUT(labels, label_map)
    if labels.max(initial=0) >= num_classes:
        values = np.arange(256)
        outside = ((values >= num_classes) & (values != ignore_index)).astype(np.uint8)
        if cv2.LUT(labels, outside).any():
            found = sorted(set(np.unique(labels[cv2.LUT(labels, outside) > 0]).tolist()))
            raise ValueError(f"Label map {path} has values {found[:10]} outside [0, {num_classes}) and not "
                             f"{ignore_index} (ignore); check num_classes and the label encoding")
    return labels


def read_mask(path: Path, num_classes: int, label_map: np.ndarray | None = None,
              ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels uint8 [H, W] from a palette or grayscale PNG of class indices, or an SBD .mat, mapped and checked
    as :func:`checked_labels` does."""
    return torch.from_numpy(checked_labels(decode_labels(path), path, num_classes, label_map, ignore_index))


class SegmentationDataset(Dataset):
    """Loads ``samples`` and returns dicts:

    ``image`` uint8 [3,H,W] (RGB, a view of channels-last memory that the collate function copies into the
    batch; the network normalises it, see :class:`~deeplab_lightning.models.DeepLab`), ``mask`` uint8 [H,W]
    (all ``ignore_index`` without labels; the module makes it int64 on the device: 1 byte a pixel to copy,
    not 8), ``id`` str and ``size`` (H, W after the transform, ints).

    ``transform`` (e.g. :class:`~deeplab_lightning.data.transforms.RandomScaleCrop`) maps (image uint8
    [H,W,3], labels uint8 [H,W], generator) to the same. An item may be fetched as ``dataset[(index, seed)]``
    (what :class:`TrainSampler` yields): the transform then draws from a generator seeded with ``seed``, so
    augmentation does not depend on the worker, the number of workers or what ran before.
    ``cache`` (a :class:`~deeplab_lightning.data.cache.DecodedSplit` of these samples) is read instead of the
    files: no decoding, and only the pixels a crop needs.
    """

    def __init__(self, samples: Sequence[Sample], num_classes: int, transform: Callable | None = None,
                 label_map: np.ndarray | None = None, ignore_index: int = IGNORE_INDEX,
                 cache: Any | None = None) -> None:
        if not samples:
            raise ValueError("The split is empty: its list names no images")
        self.samples = list(samples)
        self.num_classes = num_classes
        self.transform = transform
        self.label_map = label_map
        self.ignore_index = ignore_index
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [H, W, 3], labels uint8 [H, W]) of sample ``index``, from the cache or the files."""
        if self.cache is not None:
            return self.cache.read(index)
        sample = self.samples[index]
        image = decode_image(sample.image)
        if sample.mask is None:
            return image, np.full(image.shape[:2], self.ignore_index, dtype=np.uint8)
        labels = checked_labels(decode_labels(sample.mask), sample.mask, self.num_classes, self.label_map,
                                self.ignore_index)
        if image.shape[:2] != labels.shape:
            raise ValueError(f"Image {sample.image} is {tuple(image.shape[:2])} (H, W) but its label map "
                             f"{sample.mask} is {tuple(labels.shape)}")
        return image, labels

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, labels = self.read(index)
        if self.transform is not None:
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            image, labels = self.transform(image, labels, generator)
        elif self.cache is not None:  # a read-only view of the store: a copy to hand on (decoded files are fresh)
            image, labels = np.array(image), np.array(labels)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1),
            "mask": torch.from_numpy(labels),
            "id": self.samples[index].id,
            "size": tuple(labels.shape),
        }


def pad_collate(batch: list[dict[str, Any]], size: tuple[int, int] | None = None,
                ignore_index: int = IGNORE_INDEX, fixed: bool = False) -> dict[str, Any]:
    """Stack samples at the top-left of one canvas: ``size`` (H, W), grown to the largest image if that is
    larger, or the largest H and W when ``size`` is None. Images are padded with 0, masks with ``ignore_index``.

    ``size`` (a list of (h, w) ints, host-side) keeps each image's own size, so the module fills the image
    padding with the network's mean pixel and crops predictions back; ``padded`` says whether any image is
    smaller than the canvas; ``canvas`` is ``size`` when ``fixed`` (fixed-shape evaluation), else None.
    """
    h = max(s["image"].shape[-2] for s in batch)
    w = max(s["image"].shape[-1] for s in batch)
    if size is not None:
        h, w = max(h, size[0]), max(w, size[1])

    def stack(key: str, fill: float) -> torch.Tensor:
        first = batch[0][key]
        out = first.new_full((len(batch), *first.shape[:-2], h, w), fill)
        for i, s in enumerate(batch):
            out[i, ..., : s[key].shape[-2], : s[key].shape[-1]] = s[key]
        return out

    sizes = [tuple(int(v) for v in s["size"]) for s in batch]
    return {
        "image": stack("image", 0),
        "mask": stack("mask", ignore_index),
        "id": [s["id"] for s in batch],
        "size": sizes,
        "padded": any(hw != (h, w) for hw in sizes),
        "canvas": tuple(size) if fixed and size is not None else None,
    }


def pad_collate_own_canvas(batch: list[dict[str, Any]], ignore_index: int = IGNORE_INDEX) -> dict[str, Any]:
    """:func:`pad_collate` with each image on its own smallest ``16k + 1`` canvas: ``canvas`` is the list of
    them (the batch tensor holds the largest; the evaluation pipeline runs each canvas's images together)."""
    canvases = [smallest_eval_size([tuple(s["image"].shape[-2:])]) for s in batch]
    size = (max(c[0] for c in canvases), max(c[1] for c in canvases))
    return {**pad_collate(batch, size=size, ignore_index=ignore_index), "canvas": canvases}


def fill_padding(images: torch.Tensor, sizes: Sequence[tuple[int, int]], mean: torch.Tensor | None) -> torch.Tensor:
    """Images [N,3,H,W] with the canvas beyond each image's (h, w) in ``sizes`` filled with ``mean`` [1,3,1,1]
    (the network's mean pixel, which it normalises to zero), as the TF reference pads; a float copy, or the
    images themselves when ``mean`` is None. ``sizes`` are host-side integers, so this never waits for the GPU."""
    if mean is None:
        return images
    images = images.float()
    for i, (h, w) in enumerate(sizes):
        images[i, :, h:, :] = mean[0]
        images[i, :, :h, w:] = mean[0]
    return images


def smallest_eval_size(sizes: Sequence[tuple[int, int]], multiple: int = 16) -> tuple[int, int]:
    """The smallest (H, W) of the form ``multiple * k + 1`` that holds every (h, w) in ``sizes``
    (VOC's 500 x 500 at most -> 513 x 513; Cityscapes 1024 x 2048 -> 1025 x 2049, as in the TF reference)."""
    if not sizes:
        raise ValueError("no image sizes to derive an evaluation size from")
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    up = lambda n: -(-(n - 1) // multiple) * multiple + 1  # noqa: E731
    return up(h), up(w)


__all__ = ["EXIF_ORIENTATION", "IGNORE_INDEX", "Sample", "SegmentationDataset", "checked_labels", "fill_padding",
           "image_size", "image_tensor", "pad_collate", "pad_collate_own_canvas", "read_image", "read_mask", "smallest_eval_size", "to_uint8"]
