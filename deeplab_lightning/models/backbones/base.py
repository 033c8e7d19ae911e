"""What every backbone declares: the channels and stride of each feature map it returns."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureInfo:
    """One returned feature map: its name, number of channels and stride w.r.t. the input."""

    name: str
    channels: int
    stride: int


# torchvision's ResNet/VGG ImageNet weights expect inputs in [0, 1] normalised with these statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Base class: ``forward(x [N,3,H,W]) -> list of feature maps``, one per ``feature_info`` entry.

    The last feature map is the encoder output, at ``output_stride``. ``input_mean`` / ``input_std`` (RGB, for
    inputs in [0, 1]) are the normalisation the backbone's pretrained weights expect; the DeepLab network
    applies them to its input, so no data pipeline has to know them.
    """

    feature_info: list[FeatureInfo]
    output_stride: int
    input_mean: tuple[float, float, float] = IMAGENET_MEAN
    input_std: tuple[float, float, float] = IMAGENET_STD

    def feature_index(self, stride: int) -> int:
        """Index of the last returned feature map whose stride is ``stride``."""
        matches = [i for i, info in enumerate(self.feature_info) if info.stride == stride]
        if not matches:
            have = [info.stride for info in self.feature_info]
            raise ValueError(f"{type(self).__name__} returns no feature map of stride {stride} (strides: {have})")
        return matches[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def check_output_stride(output_stride: int) -> int:
    """Raise unless ``output_stride`` is one the DeepLab backbones support (8, 16 or 32)."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    return output_stride


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights could not be read from the cache nor downloaded."""


@contextlib.contextmanager
def pretrained_weights(what: str, url: str | None = None, hf_repo: str | None = None, kind: str = "ImageNet weights",
                       setting: str = "set model.pretrained_backbone false") -> Iterator[None]:
    """Run a pretrained-weights load; if it fails for lack of a network (an offline cluster node) or cache,
    raise one line saying which file is needed and where to put it: torchvision's ``url`` goes to
    ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``), timm's Hugging Face ``hf_repo`` to the
    Hugging Face cache (``$HF_HOME/hub``). ``kind`` names the weights and ``setting`` the setting that asked
    for them."""
    try:
        yield
    except OSError as err:  # URLError, requests' ConnectionError, huggingface_hub's offline / not-cached errors
        if url is not None:
            import torch.hub

            folder = os.path.join(torch.hub.get_dir(), "checkpoints")
            where = f"put {url.rsplit('/', 1)[-1]} (from {url}) into {folder} (set TORCH_HOME to move that folder)"
        else:
            from huggingface_hub.constants import HF_HUB_CACHE

            where = (f"fetch the Hugging Face repo {hf_repo} where there is internet (python -c \"import timm; "
                     f"timm.create_model('{hf_repo.split('/')[-1]}', pretrained=True)\") and copy its cache folder "
                     f"models--{hf_repo.replace('/', '--')} into {HF_HUB_CACHE} (set HF_HOME to move it)")
        raise PretrainedWeightsUnavailable(
            f"The {kind} of {what} are not cached here and could not be downloaded "
            f"({type(err).__name__}): {where}; or {setting}") from err
