"""Wide-ResNet-d-k with pre-activation basic blocks (Zagoruyko & Komodakis, 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mitosis_cli.models.pooled import PooledConvNet


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class WideResNet(PooledConvNet):
    """Wide-ResNet-`depth`-k whose last hidden layer has W = 64k channels.

    Groups have W/4, W/2 and W channels (16k, 32k, 64k); the stem has min(16, W/4) channels, which is
    how the paper builds W = 16 and 32. The last hidden layer is the global average of the final
    BatchNorm's output, with no ReLU when ``ending="batchnorm"`` (the paper's choice) or after a ReLU
    when ``ending="relu"`` (the original WRN).
    """

    def __init__(self, in_channels: int, width: int, num_classes: int, depth: int = 28, ending: str = "batchnorm") -> None:
        super().__init__()
        blocks_per_group = (depth - 4) // 6
        channels = [width // 4, width // 2, width]
        stem = min(16, channels[0])
        self.stem = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        layers: list[nn.Module] = []
        in_ch = stem
        for group, out_ch in enumerate(channels):
            for i in range(blocks_per_group):
                layers.append(PreActBlock(in_ch, out_ch, stride=2 if group > 0 and i == 0 else 1))
                in_ch = out_ch
        self.blocks = nn.Sequential(*layers)
        self.final_bn = nn.BatchNorm2d(width)
        self.ending = ending
        self.head = nn.Linear(width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
