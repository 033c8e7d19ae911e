"""Small building blocks shared by the DeepLab heads, and the SyncBatchNorm conversion of whole networks."""
from __future__ import annotations

from timm.layers import Conv2dSame
from timm.layers import convert_sync_batchnorm as _timm_convert_sync_batchnorm
from timm.layers.pool2d_same import MaxPool2dSame
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


def use_tf_same_padding(module: nn.Module) -> nn.Module:
    """``module`` with each strided convolution and max pool padded as TensorFlow's ``'SAME'`` pads, in place
    (weights kept): ``(k - 1) // 2`` before and the rest after, from the input size. On odd sizes this is the
    symmetric padding PyTorch uses; on even sizes TF pads one pixel less before (0 and 1 for a 3x3 stride-2 conv).
    For weights trained in TF's graphs (MobileNetV2's stride-2 layers, ResNet-v1-beta's max pool).
    Stride-1 layers with odd kernels pad symmetrically in both frameworks and are left as they are."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and child.stride != (1, 1) and not isinstance(child, Conv2dSame):
            same = Conv2dSame(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                              dilation=child.dilation, groups=child.groups, bias=child.bias is not None)
            same.weight, same.bias = child.weight, child.bias
            setattr(module, name, same)
        elif isinstance(child, nn.MaxPool2d) and child.stride not in (1, (1, 1)) \
                and not isinstance(child, MaxPool2dSame):
            setattr(module, name, MaxPool2dSame(child.kernel_size, child.stride, dilation=child.dilation,
                                                ceil_mode=child.ceil_mode))
        else:
            use_tf_same_padding(child)
    return module
