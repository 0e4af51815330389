"""DenseNet-BC (Huang et al., 2017) for CIFAR: bottleneck layers, compression 0.5, no max-pool."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mitosis_cli.models.pooled import PooledConvNet


class Bottleneck(nn.Module):
    """BN-ReLU-conv1x1(4g)-BN-ReLU-conv3x3(g), concatenated to its input."""

    def __init__(self, in_ch: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 halving the channels, then 2x2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch)
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNetBC(PooledConvNet):
    """DenseNet-BC-`depth` with growth rate g = W/11 for depth 40 (blocks 6-6-6), so W = 11g = 5.5F.

    With ``n = (depth - 4) // 6`` layers per block and compression 0.5 the channel count runs
    2g -> (2g + ng)/2 -> ... and ends at W; the last hidden layer is the global average of the final
    BatchNorm's output (no ReLU with ``ending="batchnorm"``).
    """

    def __init__(self, in_channels: int, growth: int, num_classes: int, depth: int = 40, ending: str = "batchnorm") -> None:
        super().__init__()
        n = (depth - 4) // 6
        ch = 2 * growth
        self.stem = nn.Conv2d(in_channels, ch, 3, 1, 1, bias=False)
        layers: list[nn.Module] = []
        for block in range(3):
            for _ in range(n):
                layers.append(Bottleneck(ch, growth))
                ch += growth
            if block < 2:
                layers.append(Transition(ch, ch // 2))
                ch //= 2
        self.blocks = nn.Sequential(*layers)
        self.width = ch
        self.final_bn = nn.BatchNorm2d(ch)
        self.ending = ending
        self.head = nn.Linear(ch, num_classes)


