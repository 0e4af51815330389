"""Build a model from its `ModelSpec`, and count its parameters."""

from __future__ import annotations

import math

from torch import nn

from mitosis_cli.errors import InputError
from mitosis_cli.models.densenet import DenseNetBC
from mitosis_cli.models.mlp import MLP
from mitosis_cli.models.spec import ModelSpec, check_spec, densenet_growth
from mitosis_cli.models.wide_resnet import WideResNet


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate `spec` for inputs of `input_shape` (without the batch dimension)."""
    check_spec(spec)
    if spec.arch == "mlp":
        return MLP(math.prod(input_shape), spec.width, num_classes, spec.depth, spec.ending)
    if len(input_shape) != 3:
        raise InputError(f"{spec.arch} needs image inputs (C, H, W); this data set has inputs of shape {input_shape}")
    if spec.arch == "wrn":
        return WideResNet(input_shape[0], spec.width, num_classes, spec.depth, spec.ending)
    return DenseNetBC(input_shape[0], densenet_growth(spec), num_classes, spec.depth, spec.ending)


def count_parameters(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Number of trainable parameters of `spec`, counted on the meta device (no memory, no init)."""
    import torch

    with torch.device("meta"):
        model = build_model(spec, input_shape, num_classes)
    return sum(p.numel() for p in model.parameters())
