"""V3's cascaded atrous blocks: block5-7 as copies of ResNet's block4 (V3 section 3.2, figure 3b)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck


class CascadeBlocks(nn.Module):
    """``num_blocks`` extra bottleneck stages after block4, each three units like block4 (2048 channels).

    Block ``b`` (block5 = 0) has rate ``block4_rate * 2 ** (b + 1)`` (the stride each block would have had is
    replaced by dilation to keep the output stride), and unit ``i`` of a block uses ``rate * multi_grid[i]``
    (V3 section 3.2, "Multi-grid Method"). At OS16 with multi_grid (1, 2, 4): block5 (4, 8, 16),
    block6 (8, 16, 32), block7 (16, 32, 64). [N, channels, H, W] -> [N, channels, H, W].
    """

    def __init__(self, channels: int = 2048, *, block4_rate: int = 2, num_blocks: int = 3,
                 multi_grid: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        self.block_rates = tuple(block4_rate * 2 ** (b + 1) for b in range(num_blocks))
        self.multi_grid = tuple(multi_grid)
        width = channels // Bottleneck.expansion
        self.blocks = nn.Sequential(*[
            nn.Sequential(*[Bottleneck(channels, width, dilation=rate * unit) for unit in self.multi_grid])
            for rate in self.block_rates
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)
