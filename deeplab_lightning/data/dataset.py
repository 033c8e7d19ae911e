"""A dataset of (image file, label PNG) pairs with strict checks, and a padding collate function."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors

IGNORE_INDEX = 255  # the void label of VOC and Cityscapes; data modules may declare another


@dataclass(frozen=True)
class Sample:
    """One image of a split: its id, image file and label file (None for unlabelled images to predict)."""

    id: str
    image: Path
    mask: Path | None


def to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    """Pixel values as uint8 where their scale is unambiguous: integers within 0-255 as they are; floats within
    [0, 1] times 255 (torchvision's convention), floats within [0, 255] as they are (rounded); 16-bit values
    above 255 by their 8 high bits. Raises, naming ``what`` and the range found, for anything else (bool,
    complex, negative or larger values)."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == bool or np.iscomplexobj(values) or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{what}: pixel values of type {values.dtype} are not an image; give uint8 RGB (0-255)")
    if values.size == 0:
        return values.astype(np.uint8)
    low, high = float(np.min(values)), float(np.max(values))
    floating = np.issubdtype(values.dtype, np.floating)
    if floating and not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{what}: the pixel values are not all finite")
    if low >= 0 and high <= 1 and floating:
        return np.rint(values * 255).astype(np.uint8)
    if low >= 0 and high <= 255:
        return np.rint(values).astype(np.uint8) if floating else values.astype(np.uint8)
    if not floating and low >= 0 and high <= 65535:
        return (values.astype(np.int64) >> 8).astype(np.uint8)
    raise ValueError(f"{what}: pixel values {low:g}..{high:g} fit neither 0-255, [0, 1] nor 16 bits; give uint8 "
                     f"RGB (0-255)")


def _to_rgb(img: Image.Image, what: str = "image") -> np.ndarray:
    """uint8 [H, W, 3]. Grayscale of more than 8 bits (modes I;16, I, F) is scaled by :func:`to_uint8` (PIL's
    ``convert`` would clip every value above 255 to white); palette, grayscale and RGBA images are converted
    (RGBA drops alpha)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = to_uint8(np.array(img), what)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.array(img.convert("RGB"))


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run the block with the global CPU generator seeded with ``seed`` (and restored after); as is if None."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def read_image(path: Path) -> torch.Tensor:
    """RGB uint8 [3, H, W], turned upright by its EXIF orientation (as viewers show a phone photo, and as
    its label map is drawn). Grayscale, palette, RGBA and 16-bit images are converted to 8-bit RGB. Label maps
    are never rotated: their pixels are taken as stored."""
    try:
        with Image.open(path) as img:
            img.load()
            rgb = _to_rgb(ImageOps.exif_transpose(img), str(path))
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read image {path}: {err}. Replace or remove the file.") from err
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap height and width


def image_tensor(image: str | Path | Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """RGB uint8 [3, H, W] from a file path (as :func:`read_image`), a PIL image, an array [H, W, 3] or [H, W], or
    a tensor [3, H, W]; values of another type are converted where their scale is unambiguous (see
    :func:`to_uint8`: floats in [0, 1] are scaled by 255) and refused otherwise, naming the shape or range."""
    if isinstance(image, (str, Path)):
        return read_image(Path(image))
    if isinstance(image, Image.Image):
        return torch.from_numpy(_to_rgb(image)).permute(2, 0, 1).contiguous()
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"Expected an image tensor [3, H, W], got shape {list(image.shape)}"
                             + (" (channels last: pass image.permute(2, 0, 1))" if image.ndim == 3
                                and image.shape[-1] == 3 else ""))
        if image.dtype == torch.uint8:
            return image
        return torch.from_numpy(to_uint8(image.detach().cpu().numpy(), "image tensor")).to(image.device)
    if isinstance(image, np.ndarray):
        array = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"Expected an RGB array [H, W, 3] or [H, W], got shape {list(image.shape)}")
        array = to_uint8(array, "image array")
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
    raise TypeError(f"Expected a path, PIL image, RGB array [H, W, 3] or tensor [3, H, W], got {type(image)}")


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file as :func:`read_image` returns it, from its header (pixels are not decoded)."""
    try:
        with Image.open(path) as img:
            if img.getexif().get(EXIF_ORIENTATION) in TRANSPOSED_ORIENTATIONS:
                return img.width, img.height
            return img.height, img.width
    except OSError as err:
        raise ValueError(f"Cannot read image {path}: {err}. Replace or remove the file.") from err


def _read_label_array(path: Path) -> np.ndarray:
    if path.suffix == ".mat":  # SBD: a MATLAB struct GTcls with the class map in .Segmentation
        from scipy.io import loadmat

        return np.asarray(loadmat(str(path))["GTcls"][0]["Segmentation"][0], dtype=np.uint8)
    with Image.open(path) as img:
        img.load()
        if img.mode not in ("P", "L"):
            raise ValueError(f"mode {img.mode!r}; expected a palette ('P') or grayscale ('L') PNG of class "
                             f"indices, not colours")
        return np.array(img, dtype=np.uint8)


def read_mask(path: Path, num_classes: int, label_map: np.ndarray | None = None,
              ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels uint8 [H, W] from a palette or grayscale PNG of class indices, or an SBD .mat.

    ``label_map`` (a 256-entry lookup table) maps raw ids to train ids first (Cityscapes). Any label outside
    [0, num_classes) other than ``ignore_index`` raises, naming the file: a silently wrong label is worse than
    a crash.
    """
    try:
        labels = _read_label_array(path)
    except Exception as err:  # PIL, scipy (MatReadError on an empty .mat) and struct errors alike
        raise ValueError(f"Cannot read label map {path}: {type(err).__name__}: {err}. Replace or remove the "
                         f"file") from err
    if label_map is not None:
        labels = label_map[labels]
    bad = (labels >= num_classes) & (labels != ignore_index)
    if bad.any():
        values = sorted(set(np.unique(labels[bad]).tolist()))
        raise ValueError(f"Label map {path} has values {values[:10]} outside [0, {num_classes}) and not "
                         f"{ignore_index} (ignore); check num_classes and the label encoding")
    return torch.from_numpy(labels)


class SegmentationDataset(Dataset):
    """Loads ``samples`` and returns dicts:

    ``image`` uint8 [3,H,W] (RGB; the network normalises it, see :class:`~deeplab_lightning.models.DeepLab`),
    ``mask`` long [H,W] (all ``ignore_index`` without labels), ``id`` str and ``size`` (H, W after transforms,
    ints).
    ``transform`` is a joint transforms.v2 callable over (tv_tensors.Image, tv_tensors.Mask).
    An item may be fetched as ``dataset[(index, seed)]`` (what :class:`TrainSampler` yields): the random
    transforms then draw from a generator seeded with ``seed``, so augmentation does not depend on the
    worker, the number of workers or what ran before.
    """

    def __init__(self, samples: Sequence[Sample], num_classes: int, transform: Callable | None = None,
                 label_map: np.ndarray | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        if not samples:
            raise ValueError("The split is empty: its list names no images")
        self.samples = list(samples)
        self.num_classes = num_classes
        self.transform = transform
        self.label_map = label_map
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        image = read_image(sample.image)
        if sample.mask is None:
            mask = torch.full(image.shape[-2:], self.ignore_index, dtype=torch.uint8)
        else:
            mask = read_mask(sample.mask, self.num_classes, self.label_map, self.ignore_index)
        if image.shape[-2:] != mask.shape:
            raise ValueError(f"Image {sample.image} is {tuple(image.shape[-2:])} (H, W) but its label map "
                             f"{sample.mask} is {tuple(mask.shape)}")
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        if self.transform is not None:
            with _seeded(seed):
                image, mask = self.transform(image, mask)
        image = image.as_subclass(torch.Tensor)
        return {
            "image": image,
            "mask": mask.as_subclass(torch.Tensor).long(),
            "id": sample.id,
            "size": tuple(image.shape[-2:]),
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
