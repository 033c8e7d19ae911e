"""DeepLab V1's LargeFOV head and the VGG fc6/fc7 conversion it starts from (V1 sections 3.1 and 4.1)."""
from __future__ import annotations

import torch
from torch import nn


class FCHead(nn.Sequential):
    """fc6 (3x3, ``dilation``) -> ReLU -> dropout -> fc7 (1x1) -> ReLU -> dropout -> fc8 (1x1 classifier).

    With ``dilation=12`` and 1024 channels this is DeepLab-LargeFOV (V1 section 4.1: kernel 3x3, input stride
    12, 1024 channels; dropout 0.5). It is also one branch of V2's ASPP-L (dilation 6/12/18/24). Dropout is
    element-wise, as Caffe's DropoutLayer in the released models (``nn.Dropout2d`` would drop whole channels).
    [N, in_channels, H, W] -> [N, num_classes, H, W].
    """

    def __init__(self, in_channels: int, num_classes: int, *, dilation: int = 12, channels: int = 1024,
                 dropout: float = 0.5) -> None:
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )
        nn.init.normal_(self[-1].weight, std=0.01)  # fc8: Gaussian, std 0.01 (V1 section 4.1)
        nn.init.zeros_(self[-1].bias)

    @property
    def fc6(self) -> nn.Conv2d:
        return self[0]

    @property
    def fc7(self) -> nn.Conv2d:
        return self[3]

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """fc6 and fc7, converted from VGG-16's ImageNet fc layers: trained at the backbone's learning rate, as
        in the released Caffe models (only fc8 is new)."""
        return [*self.fc6.parameters(), *self.fc7.parameters()]

    def load_vgg_fc(self, fc: dict[str, torch.Tensor]) -> None:
        """Initialise fc6/fc7 by subsampling VGG-16's ImageNet fully connected layers (V1 section 3.1).

        fc6 [4096, 512*7*7] -> every 4th filter and taps (0, 3, 6) of the 7x7 grid -> [1024, 512, 3, 3];
        fc7 [4096, 4096] -> every 4th output and input -> [1024, 1024, 1, 1]. This is the paper's 1024-channel
        conversion (faster, no loss of accuracy).
        """
        out6, out7 = self.fc6.out_channels, self.fc7.out_channels
        step6, step7 = 4096 // out6, 4096 // out7
        w6 = fc["0.weight"].view(4096, 512, 7, 7)[::step6][:, :, ::3, ::3]
        w7 = fc["3.weight"][::step7, ::step6]
        with torch.no_grad():
            self.fc6.weight.copy_(w6)
            self.fc6.bias.copy_(fc["0.bias"][::step6])
            self.fc7.weight.copy_(w7[:, :, None, None])
            self.fc7.bias.copy_(fc["3.bias"][::step7])
