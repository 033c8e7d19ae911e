"""Joint image/mask augmentation with torchvision.transforms.v2 (masks always resized with nearest)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Crop padding of the image: the mean colour, which normalises to ~0 (DeepLab pads with the mean pixel).
MEAN_PIXEL = tuple(round(255 * m) for m in IMAGENET_MEAN)


class RandomScale(v2.Transform):
    """Resize image and mask by one factor drawn uniformly from ``scale_range`` (DeepLab: 0.5 to 2.0).

    Images are resized bilinearly (with antialiasing), masks with nearest neighbour (tv_tensors.Mask).
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
        return TF.resize(inpt, size, antialias=True)


def train_transform(crop_size: int | Sequence[int], scale_range: Sequence[float] = (0.5, 2.0),
                    hflip: bool = True) -> v2.Compose:
    """Random scale -> pad to the crop (image: mean pixel, mask: 255) -> random crop -> horizontal flip."""
    fill = {tv_tensors.Image: MEAN_PIXEL, tv_tensors.Mask: 255}
    steps: list[v2.Transform] = [RandomScale(scale_range), v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def normalize(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 normalised with the ImageNet statistics."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (image.float() / 255.0 - mean_t) / std_t
