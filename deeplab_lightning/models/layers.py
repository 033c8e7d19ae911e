"""Small building blocks shared by the DeepLab heads, and the SyncBatchNorm conversion of whole networks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import convert_sync_batchnorm as _timm_convert_sync_batchnorm
from torch import nn


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm synchronised across processes (V3 section 4.1: BN statistics over the
    whole batch), the activation of timm's fused norm + activation layers kept.

    ``nn.SyncBatchNorm.convert_sync_batchnorm`` turns timm's ``BatchNormAct2d`` (Xception-65's stem, most timm
    encoders) into a plain ``SyncBatchNorm`` and silently drops its ReLU; timm's conversion keeps it (and
    converts ``nn.BatchNorm2d`` exactly as PyTorch does). Outputs in eval mode are unchanged (tested).
    """
    return _timm_convert_sync_batchnorm(model)


def logits_conv(in_channels: int, num_classes: int) -> nn.Conv2d:
    """The 1x1 classifier of V3/V3+ with the TF reference's initialisation (``get_branch_logits``: truncated
    normal, std 0.01; zero bias): [N, in_channels, H, W] -> [N, num_classes, H, W]."""
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.trunc_normal_(conv.weight, std=0.01, a=-0.02, b=0.02)  # TF truncates at two standard deviations
    nn.init.zeros_(conv.bias)
    return conv


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) + BatchNorm + ReLU; optionally depthwise-separable.

    ``separable=True`` is the V3+ atrous separable convolution (DeepLab V3+, section 3.2): a depthwise
    ``kernel_size`` conv with ``dilation`` followed by BN + ReLU, then a pointwise 1x1 conv + BN + ReLU.
    Shapes: [N, in_channels, H, W] -> [N, out_channels, H, W] (padding keeps H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        dilation: int = 1,
        separable: bool = False,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        if separable and kernel_size > 1:
            layers = [
                nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, dilation=dilation,
                          groups=in_channels, bias=False),
                nn.BatchNorm2d(in_channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
            ]
        else:
            layers = [nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                                bias=False)]
        super().__init__(*layers, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def tf_same_pad(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
                dilation: tuple[int, int] = (1, 1), value: float = 0.0) -> torch.Tensor:
    """``x`` [N, C, H, W] padded as TensorFlow's ``'SAME'`` pads before a strided window: ``max((-n) % s + k - s,
    0)`` pixels in all (``k`` the dilated kernel), the larger half after. Written without branches or rounding
    functions, so that ``torch.export`` (and ONNX) keep the input size dynamic (timm's ``Conv2dSame`` takes minutes
    there). A TorchScript trace fixes the padding at the traced size's parity (odd on the 16k + 1 canvases)."""
    pads = []
    for n, k, s, d in zip(reversed(x.shape[-2:]), reversed(kernel_size), reversed(stride), reversed(dilation)):
        n = int(n) if isinstance(n, torch.Tensor) else n  # a TorchScript trace's size
        total = torch.sym_max((-n) % s + (k - 1) * d + 1 - s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


class Conv2dTFSame(nn.Conv2d):
    """``nn.Conv2d`` padded as TF's ``'SAME'`` (:func:`tf_same_pad`); its ``padding`` is unused (0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(tf_same_pad(x, self.kernel_size, self.stride, self.dilation), self.weight, self.bias,
                        self.stride, 0, self.dilation, self.groups)


class MaxPool2dTFSame(nn.MaxPool2d):
    """``nn.MaxPool2d`` padded as TF's ``'SAME'`` (with -inf, :func:`tf_same_pad`); its ``padding`` is unused."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        x = tf_same_pad(x, pair(self.kernel_size), pair(self.stride), pair(self.dilation), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride, 0, self.dilation, self.ceil_mode)


def use_tf_same_padding(module: nn.Module) -> nn.Module:
    """``module`` with each strided convolution and max pool padded as TensorFlow's ``'SAME'`` pads, in place
    (weights kept): ``(k - 1) // 2`` before and the rest after, from the input size. On odd sizes this is the
    symmetric padding PyTorch uses; on even sizes TF pads one pixel less before (0 and 1 for a 3x3 stride-2 conv).
    For weights trained in TF's graphs (MobileNetV2's stride-2 layers, ResNet-v1-beta's max pool).
    Stride-1 layers with odd kernels pad symmetrically in both frameworks and are left as they are."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and child.stride != (1, 1) and not isinstance(child, Conv2dTFSame):
            same = Conv2dTFSame(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                dilation=child.dilation, groups=child.groups, bias=child.bias is not None)
            same.weight, same.bias = child.weight, child.bias
            setattr(module, name, same)
        elif isinstance(child, nn.MaxPool2d) and child.stride not in (1, (1, 1)) \
                and not isinstance(child, MaxPool2dTFSame):
            setattr(module, name, MaxPool2dTFSame(child.kernel_size, child.stride, dilation=child.dilation,
                                                  ceil_mode=child.ceil_mode))
        else:
            use_tf_same_padding(child)
    return module
