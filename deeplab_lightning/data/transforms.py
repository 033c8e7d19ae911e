"""Joint image/mask augmentation with torchvision.transforms.v2 (masks resized with nearest-exact)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


class RandomScale(v2.Transform):
    """Resize image and mask by one factor drawn uniformly from ``scale_range`` (DeepLab: 0.5 to 2.0).

    Images are resized bilinearly (with antialiasing), masks with the nearest source pixel centre
    ("nearest-exact"), on the image's half-pixel grid. torchvision's own mask resize (``floor(x * scale)``)
    would put the labels half a source pixel up and left of the image at scale 0.5; the TF reference keeps
    image and labels aligned too (both with ``align_corners=True``).
    """

    def __init__(self, scale_range: Sequence[float] = (0.5, 2.0)) -> None:
        super().__init__()
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {tuple(scale_range)}")
        self.scale_range = (float(low), float(high))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        low, high = self.scale_range
        return {"scale": low + (high - low) * torch.rand(()).item()}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        h, w = inpt.shape[-2:]
        size = [max(1, round(h * params["scale"])), max(1, round(w * params["scale"]))]
        if isinstance(inpt, tv_tensors.Mask):
            labels = inpt.as_subclass(torch.Tensor)[None]  # resize_image wants [..., C, H, W]
            return tv_tensors.wrap(TF.resize_image(labels, size, v2.InterpolationMode.NEAREST_EXACT)[0], like=inpt)
        return TF.resize(inpt, size, antialias=True)


class RandomCropWithin(v2.Transform):
    """A random ``crop_size`` window of image and mask, clipped to the image: [.., H, W] -> [.., min(H, ch),
    min(W, cw)].

    Nothing is padded here: the collate function pads each batch to the crop size at the bottom and right (the
    mask with the ignore label) and the network's module fills the image padding with its backbone's mean
    pixel, as the TF reference pads to the crop at the top-left corner before cropping.
    """

    def __init__(self, crop_size: int | Sequence[int]) -> None:
        super().__init__()
        self.crop_size = size_pair(crop_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ch, cw = min(h, self.crop_size[0]), min(w, self.crop_size[1])
        top = int(torch.randint(h - ch + 1, ())) if h > ch else 0
        left = int(torch.randint(w - cw + 1, ())) if w > cw else 0
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        return TF.crop(inpt, **params)


def size_pair(size: int | Sequence[int], name: str = "crop_size") -> tuple[int, int]:
    """(H, W) of a size given as an int or a pair (a crop, an evaluation canvas); raises, naming the setting
    ``name``, unless both are positive."""
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or [height, width], got {size!r}")
    return pair  # type: ignore[return-value]


def train_transform(crop_size: int | Sequence[int], scale_range: Sequence[float] = (0.5, 2.0),
                    hflip: bool = True) -> v2.Compose:
    """Random scale -> random crop (at most ``crop_size``, see :class:`RandomCropWithin`) -> horizontal flip."""
    steps: list[v2.Transform] = [RandomScale(scale_range), RandomCropWithin(crop_size)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)
