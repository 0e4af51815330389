"""Data sets: the built-in MNIST subset, a generated hidden-manifold task, and torchvision folders."""

from mitosis_cli.data.registry import DATASETS, Dataset, load_dataset

__all__ = ["DATASETS", "Dataset", "load_dataset"]
