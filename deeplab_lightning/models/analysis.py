"""Geometry of a network: its theoretical receptive field, measured by back-propagation."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .deeplab import DeepLab


def receptive_field(model: nn.Module, size: int = 513) -> tuple[int, int]:
    """Theoretical receptive field (height, width in input pixels) of the centre logit, on a ``size`` x
    ``size`` input; a value equal to ``size`` means "at least the whole input" (always so with image pooling).
    For a :class:`DeepLab` the logit is taken at the head's stride, before the bilinear upsampling (which
    would mix neighbouring logits).

    A copy of the model gets every conv weight set to ``1 / fan_in`` and BatchNorm in eval mode with its
    initial (identity) statistics; on an all-ones input every activation is then positive, no ReLU blocks a
    path, and the gradient of the centre logit is non-zero exactly on the input pixels it depends on.
    """
    probe = copy.deepcopy(model).float().eval()
    with torch.no_grad():
        for m in probe.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()
    image = torch.ones(1, 3, size, size, requires_grad=True)
    out = probe.head(probe.backbone(image)) if isinstance(probe, DeepLab) else probe(image)
    out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    hit = image.grad[0].abs().sum(0) > 0
    rows, cols = hit.any(1).nonzero(), hit.any(0).nonzero()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
