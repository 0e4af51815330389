"""Fully connected network: input -> `depth` hidden layers of width W -> linear head."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """A multi-layer perceptron with a width-W last hidden layer.

    Parameters
    ----------
    input_dim : int
        Flattened input size.
    width : int
        Width W of every hidden layer (the last one is the studied representation).
    num_classes : int
        Outputs of the head.
    depth : int
        Number of hidden layers (>= 1).
    ending : {"relu", "batchnorm"}
        How the last hidden layer ends: ``relu`` (Linear -> ReLU), or ``batchnorm``
        (Linear -> BatchNorm, no ReLU), as the paper's Wide-ResNets and DenseNets end.
    """

    def __init__(self, input_dim: int, width: int, num_classes: int, depth: int = 2, ending: str = "relu") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = input_dim
        for _ in range(depth - 1):
            layers += [nn.Linear(fan_in, width), nn.ReLU(inplace=True)]
            fan_in = width
        layers.append(nn.Linear(fan_in, width))
        layers.append(nn.BatchNorm1d(width) if ending == "batchnorm" else nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer, (N, W)."""
        return self.body(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
