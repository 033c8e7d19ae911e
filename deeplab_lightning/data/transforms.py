"""Training augmentation of DeepLab (random scale, random crop, horizontal flip), computed crop window first.

The TF reference scales the whole image, pads it to the crop, crops and flips (``input_preprocess.py``). Here
the scale and the crop window are drawn first and only the pixels of the window are computed, straight from
the source image: the same crops (same distribution, same pixels up to the resampler's rounding), at the cost
of the crop rather than of the scaled image (a 2048x1024 Cityscapes image at scale 2 is 8.4 M pixels; its 769
crop 0.6 M).

Resampling: images bilinear on half-pixel centres (as ``F.interpolate(..., align_corners=False)``, which the
evaluation uses), without antialiasing, as the TF reference (``resize_bilinear``) trains; labels by the nearest
source pixel centre ("nearest-exact"), so label and image stay aligned at every scale. (The TF reference uses
``align_corners=True`` for both; the network and its evaluation here use half-pixel centres throughout.)
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

cv2.setNumThreads(1)  # one data-loader worker, one core: threads inside OpenCV would compete with the others


def size_pair(size: int | Sequence[int], name: str = "crop_size") -> tuple[int, int]:
    """(H, W) of a size given as an int or a pair (a crop, an evaluation canvas); raises, naming the setting
    ``name``, unless both are positive."""
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or [height, width], got {size!r}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class CropWindow:
    """One draw: the source image (h, w) scaled to ``scaled`` (H, W) = (round(s h), round(s w)), the window
    rows [top, top + height) and columns [left, left + width) of the scaled image, mirrored when ``flip``."""

    source: tuple[int, int]
    scaled: tuple[int, int]
    top: int
    left: int
    height: int
    width: int
    flip: bool

    def _axis(self, axis: int) -> tuple[float, float, int, int]:
        """(step, offset, first, stop) along ``axis`` (0 rows, 1 columns): output pixel i samples the source at
        ``offset + step * i`` (half-pixel centres), within source indices [first, stop)."""
        size, scaled = self.source[axis], self.scaled[axis]
        start, count = (self.top, self.height) if axis == 0 else (self.left, self.width)
        ratio = size / scaled
        step, offset = ratio, (start + 0.5) * ratio - 0.5
        if axis == 1 and self.flip:
            step, offset = -ratio, (start + count - 0.5) * ratio - 0.5
        low, high = sorted((offset, offset + step * (count - 1)))
        return step, offset, max(0, math.floor(low) - 1), min(size, math.floor(high) + 3)

    def resample_image(self, image: np.ndarray) -> np.ndarray:
        """The window of the scaled image, bilinear: uint8 [h, w, C] -> [height, width, C]. Reads only the
        source pixels the window needs (a memory-mapped image is read only there)."""
        (sy, oy, y0, y1), (sx, ox, x0, x1) = self._axis(0), self._axis(1)
        affine = np.array([[sx, 0.0, ox - x0], [0.0, sy, oy - y0]])
        out = cv2.warpAffine(np.ascontiguousarray(image[y0:y1, x0:x1]), affine, (self.width, self.height),
                             flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        return out if out.ndim == 3 else out[..., None]

    def resample_labels(self, labels: np.ndarray) -> np.ndarray:
        """The window of the scaled label map, each output pixel the label of the source pixel whose centre is
        nearest (torchvision's "nearest-exact", ``floor((i + 0.5) * h / H)``, here in exact integer arithmetic:
        a tie goes to the lower-right pixel): uint8 [h, w] -> [height, width]."""
        rows = self._nearest(0, labels.shape[0])
        cols = self._nearest(1, labels.shape[1])
        return labels[rows][:, cols]

    def _nearest(self, axis: int, size: int) -> np.ndarray:
        start, count = (self.top, self.height) if axis == 0 else (self.left, self.width)
        index = np.arange(start, start + count)
        if axis == 1 and self.flip:
            index = index[::-1]
        return np.minimum((2 * index + 1) * size // (2 * self.scaled[axis]), size - 1)


class RandomScaleCrop:
    """Random scale, random crop within the scaled image, random horizontal flip, as one :class:`CropWindow`.

    Args:
        crop_size: the crop (H, W); an image smaller than it after scaling is kept whole (nothing is padded
            here: the collate function pads each batch to the crop size, the mask with the ignore label, and
            the module fills the image padding with its backbone's mean pixel, as the TF reference pads).
        scale_range: the scale factor's range (DeepLab: 0.5 to 2.0).
        scale_step: ``None`` draws the scale uniformly from the range; a step draws it uniformly from
            ``low, low + step, ..., high``, as the TF reference does (``scale_factor_step_size``, 0.25 in its
            training scripts).
        hflip: mirror half of the crops.
    """

    def __init__(self, crop_size: int | Sequence[int], scale_range: Sequence[float] = (0.5, 2.0),
                 scale_step: float | None = None, hflip: bool = True) -> None:
        self.crop_size = size_pair(crop_size)
        low, high = (float(v) for v in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {tuple(scale_range)}")
        self.scale_range = (low, high)
        self.scales: list[float] | None = None
        if scale_step is not None:
            count = (high - low) / scale_step + 1 if scale_step > 0 else 0
            if count < 1 or abs(count - round(count)) > 1e-6:
                raise ValueError(f"scale_step {scale_step} must be positive and divide scale_range {low}..{high} "
                                 f"into equal steps (the TF reference: 0.25 over 0.5..2.0)")
            self.scales = [low + k * scale_step for k in range(round(count))]
        self.hflip = hflip

    def draw(self, size: tuple[int, int], generator: torch.Generator | None = None) -> CropWindow:
        """A random window for an image of ``size`` (h, w), drawn from ``generator`` (torch's global one if None)."""
        uniform = torch.rand(4, generator=generator).tolist()  # scale, top, left, flip
        if self.scales is None:
            low, high = self.scale_range
            scale = low + (high - low) * uniform[0]
        else:
            scale = self.scales[min(int(uniform[0] * len(self.scales)), len(self.scales) - 1)]
        h, w = size
        scaled = (max(1, round(h * scale)), max(1, round(w * scale)))
        height, width = min(scaled[0], self.crop_size[0]), min(scaled[1], self.crop_size[1])
        top = min(int(uniform[1] * (scaled[0] - height + 1)), scaled[0] - height)
        left = min(int(uniform[2] * (scaled[1] - width + 1)), scaled[1] - width)
        flip = self.hflip and uniform[3] < 0.5
        return CropWindow(size, scaled, top, left, height, width, flip)

    def __call__(self, image: np.ndarray, labels: np.ndarray,
                 generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [h, w, 3], labels uint8 [h, w]) -> the same at the crop's size (at most ``crop_size``)."""
        window = self.draw(labels.shape[:2], generator)
        return window.resample_image(image), window.resample_labels(labels)
