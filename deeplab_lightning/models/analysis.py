"""Geometry of a network: its theoretical receptive field, and where its upsampled logits are centred."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .deeplab import DeepLab
from .heads.aspp import ImagePooling

# DeepLab V3+ paper (ECCV 2018), multiply-adds in billions at 513 x 513, 21 classes: Table 3 (ResNet-101,
# without / with the decoder) and Table 5 (Xception-65, decoder + depthwise-separable convs), by
# (model name, output stride).
PAPER_MULTIPLY_ADDS = {
    ("deeplabv3_resnet101", 16): 81.02, ("deeplabv3_resnet101", 8): 276.18,
    ("deeplabv3plus_resnet101", 16): 101.28, ("deeplabv3plus_resnet101", 8): 297.92,
    ("deeplabv3plus_xception65", 16): 54.17, ("deeplabv3plus_xception65", 8): 177.10,
}


def receptive_field(model: nn.Module, size: int = 513, at: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int]:
    """Theoretical receptive field (height, width in input pixels, within the input) of one logit, on a
    ``size`` x ``size`` input: the centre logit by default, or the one at ``at`` (fractions of the logit map's
    height and width: ``(0, 0)`` is the top-left corner, whose field shows how far context reaches across the
    image). A value equal to ``size`` means "at least the whole input" (always so with image pooling).
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
    row, col = (min(int(f * n), n - 1) for f, n in zip(at, out.shape[2:]))
    out[0, :, row, col].sum().backward()
    hit = image.grad[0].abs().sum(0) > 0
    rows, cols = hit.any(1).nonzero(), hit.any(0).nonzero()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


class _CentreTap(nn.Module):
    """A pooling layer's geometry with its window reduced to the centre sample: [N,C,H,W] -> [N,C,H',W']."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.k, self.s, self.p, self.d = (int(v[0]) if isinstance(v, tuple) else int(v)
                                          for v in (pool.kernel_size, pool.stride, pool.padding, pool.dilation))
        if pool.ceil_mode:
            raise ValueError("ceil_mode pooling is not supported by the geometry probe")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.p,) * 4)
        start = self.d * (self.k // 2)
        out_h, out_w = ((n - self.d * (self.k - 1) - 1) // self.s + 1 for n in x.shape[-2:])
        return x[..., start:start + self.s * (out_h - 1) + 1:self.s, start:start + self.s * (out_w - 1) + 1:self.s]


def _geometry_probe(model: DeepLab) -> DeepLab:
    """A copy of ``model`` that is linear and positive: every conv keeps only its centre tap, averaging its
    input channels; max pools keep their centre sample; BatchNorm is the identity; image pooling outputs zeros
    (a global average has no position); the input is not normalised. Each activation is then a positive
    multiple of the input at the pixel the convolutions are centred on."""
    probe = copy.deepcopy(model).float().eval()
    for name, m in list(probe.named_modules()):
        if isinstance(m, nn.MaxPool2d):
            parent, _, child = name.rpartition(".")
            setattr(probe.get_submodule(parent) if parent else probe, child, _CentreTap(m))
    with torch.no_grad():
        probe.pixel_mean.zero_()
        probe.pixel_std.fill_(1.0)
        for m in probe.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                m.weight[:, :, m.kernel_size[0] // 2, m.kernel_size[1] // 2] = 1.0 / m.weight.shape[1]
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()
                m.eps = 0.0
        for m in probe.modules():
            if isinstance(m, ImagePooling):
                m.conv.weight.zero_()
    return probe


def logit_centres(model: DeepLab, size: int = 513) -> torch.Tensor:
    """Input column [size] on which the logits of each output column are centred, by pushing a column-index
    ramp (and an all-ones image, to divide by) through a linear, positive copy of the network
    (:func:`_geometry_probe`). For a perfectly placed network this is ``arange(size)``."""
    probe = _geometry_probe(model)
    ramp = torch.arange(1, size + 1, dtype=torch.float64).float().expand(1, 3, size, size)
    with torch.no_grad():
        out = probe(torch.cat([ramp, torch.ones_like(ramp)]))[:, 0].double()
    return (out[0] / out[1]).mean(0) - 1.0


def upsampling_misplacement(model: DeepLab, size: int = 513) -> float:
    """Largest distance, in input pixels, between an output pixel and the input pixel its logits are centred
    on (:func:`logit_centres`), over a ``size`` x ``size`` input."""
    return float((logit_centres(model, size) - torch.arange(size, dtype=torch.float64)).abs().max())


def multiply_adds(model: nn.Module, size: int = 513, by_module: bool = False) -> float | dict[str, float]:
    """Multiply-adds (conv and matmul, forward, batch 1) on a ``size`` x ``size`` input, in billions, counted
    on the meta device (``model`` may live there: nothing is computed). With ``by_module``, a dict from each
    module's qualified name (``"backbone.layer1"``; ``""`` for the whole model) to its count."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, size, size, device=device))
    if not by_module:
        return counter.get_total_flops() / 2e9
    root = type(model).__name__
    return {("" if key in ("Global", root) else key.removeprefix(root + ".")): sum(ops.values()) / 2e9
            for key, ops in counter.get_flop_counts().items()}
