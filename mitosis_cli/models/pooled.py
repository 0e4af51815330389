"""What the paper's CNNs share: the last hidden layer is the global average of the final BatchNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PooledConvNet(nn.Module):
    """Base of Wide-ResNet and DenseNet: stem -> blocks -> final BatchNorm -> global average -> head.

    Subclasses build `stem`, `blocks`, `final_bn`, `head` and set `ending`: ``"batchnorm"`` reads the
    BatchNorm output as it is (the paper's last hidden layer, no ReLU), ``"relu"`` applies a ReLU first.
    """

    stem: nn.Module
    blocks: nn.Module
    final_bn: nn.BatchNorm2d
    head: nn.Linear
    ending: str

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer, (N, W)."""
        out = self.final_bn(self.blocks(self.stem(x)))
        if self.ending == "relu":
            out = F.relu(out)
        return out.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
