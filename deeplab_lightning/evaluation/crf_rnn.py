"""A trainable dense CRF (CRF-as-RNN, Zheng et al., ICCV 2015): the mean field of :func:`.crf.dense_crf` as
differentiable layers, with learnable kernel weights and label compatibility, appended to any
DeepLab network and fine-tuned end to end after it.

Each iteration filters the current marginals with the normalised Gaussian (position) and bilateral (position
and colour) kernels on the permutohedral lattice, weights each kernel's message per class, mixes the classes
with the compatibility matrix and adds the unaries. The lattice filtering is a product of sparse matrices
(splat, blurs, slice), so gradients flow through it by autograd: its adjoint is the same filtering with the
matrices transposed (the blurs are symmetric). The kernel widths stay fixed, as in CRF-as-RNN.
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from ..models.deeplab import parameter_groups_of
from .crf import CRFSettings, _NormalisedKernel, _pixel_features, dense_crf

CLIP = inspect.signature(dense_crf).parameters["clip"].default  # dense_crf's floor of the probabilities


class TrainableDenseCRF(nn.Module):
    """Mean-field inference of a fully connected CRF with learnable parameters.

    Args:
        num_classes: C.
        settings: the mean-field iterations (CRF-as-RNN trains with 5 and tests with 10), the initial kernel
            weights and the fixed kernel widths (DeepLab V2's VOC values by default).

    Parameters: ``kernel_weights`` [2, C] (per kernel, Gaussian then bilateral, the weight of each class's
    message; initially ``pos_w`` and ``bi_w``) and ``compatibility`` [C, C] (``mu(l, l')``, initially Potts:
    1 - identity). With these initial values the output is :func:`.crf.dense_crf`'s
    (tested).

    ``forward(images uint8 [N, 3, H, W], logits [N, C, H, W]) -> scores [N, C, H, W]`` whose softmax is the
    final marginals: cross-entropy on them trains the CRF and the network under it.
    """

    def __init__(self, num_classes: int, settings: CRFSettings | None = None) -> None:
        super().__init__()
        s = settings or CRFSettings()
        self.iterations = s.iterations
        self.kernel_widths = ((s.pos_xy_std, None), (s.bi_xy_std, s.bi_rgb_std))
        self.kernel_weights = nn.Parameter(torch.tensor([[float(s.pos_w)] * num_classes,
                                                         [float(s.bi_w)] * num_classes]))
        self.compatibility = nn.Parameter(1.0 - torch.eye(num_classes))

    def forward(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if images.shape[0] != logits.shape[0] or images.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"images {list(images.shape)} and logits {list(logits.shape)} differ in batch or size")
        with torch.autocast(logits.device.type, enabled=False):
            dtype = torch.promote_types(logits.dtype, torch.float32)  # float32, or float64 (gradient checks)
            return torch.stack([self._mean_field(img.permute(1, 2, 0).contiguous(), lg.to(dtype))
                                for img, lg in zip(images.to(torch.uint8), logits)])

    def _mean_field(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        c, h, w = logits.shape
        # dense_crf's unary, -log(max(p, clip)), of p = softmax(logits): differentiable in the logits.
        unary = -torch.log_softmax(logits, dim=0).clamp_min(math.log(CLIP)).reshape(c, -1)
        unary = unary.T.contiguous()  # [HW, C], row-major as the lattice products want it
        kernels = [_NormalisedKernel(_pixel_features(image, xy, rgb)) for xy, rgb in self.kernel_widths]
        scores = -unary
        for _ in range(self.iterations):
            q = torch.softmax(scores, dim=1)
            messages = sum(kernel(q) * weight for kernel, weight in zip(kernels, self.kernel_weights))
            scores = -unary - messages @ self.compatibility.T  # pairwise(l) = sum_l' mu(l, l') message(l')
        return scores.T.reshape(c, h, w)


class WithCRF(nn.Module):
    """A DeepLab network followed by a :class:`TrainableDenseCRF` on its logits and input image:
    ``forward(images uint8/float [N, 3, H, W] in [0, 255]) -> scores [N, C, H, W]``. The network's attributes
    (``backbone``, ``pixel_mean``, ``align_corners`` ...) are reachable through it; its parameters keep their
    names under ``net.``."""

    def __init__(self, net: nn.Module, crf: TrainableDenseCRF) -> None:
        super().__init__()
        self.net, self.crf = net, crf

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.crf(images.clamp(0, 255).round(), self.net(images))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The network's groups, with the CRF's parameters in ``head`` (new layers)."""
        groups = parameter_groups_of(self.net)
        return groups | {"head": [*groups.get("head", []), *self.crf.parameters()]}

    def parameters_without_weight_decay(self) -> list[nn.Parameter]:
        """The CRF's kernel weights and compatibility: weight decay would pull them towards no CRF."""
        return [*self.crf.parameters()]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)

