"""Models whose last hidden layer is what `mitosis` studies: `features(x) -> (N, W)` and a linear `head`."""

from mitosis_cli.models.registry import ARCHS, ModelSpec, build_model

__all__ = ["ARCHS", "ModelSpec", "build_model"]
