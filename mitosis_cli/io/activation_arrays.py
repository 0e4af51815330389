"""Activations held in memory: the same content and readers as an activation file, for arrays that never
were one (a notebook's features) or for a file loaded whole."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import (
    ActivationFile,
    ActivationHeader,
    SplitArrays,
    check_head,
    check_logits,
    check_split,
    write_activations,
)
from mitosis_cli.io.checks import check_finite, check_labels


@dataclass(frozen=True)
class Activations:
    """Activations held in memory: a header, the head, and the splits' arrays.

    Build them from your own arrays with `Activations.from_arrays`, or load a file with `read_activations`.
    """

    header: ActivationHeader
    head_weight: np.ndarray | None
    head_bias: np.ndarray | None
    splits: Mapping[str, SplitArrays]
    name: str = "arrays"

    @classmethod
    def from_arrays(
        cls, head_weight: np.ndarray | None, head_bias: np.ndarray | None, *,
        train: tuple[np.ndarray, np.ndarray] | None = None, test: tuple[np.ndarray, np.ndarray] | None = None,
        name: str = "arrays", num_classes: int | None = None, **header: Any,
    ) -> Activations:
        """Activations from (features, labels) pairs per split and the head that reads the layer.

        Parameters
        ----------
        head_weight, head_bias : array (C, W), array (C,), or None
            The trained last linear layer; None when you have only the features (what reads the head is
            then not measured).
        train, test : (features (N, W), labels (N,)), optional
            At least one split; logits are computed as features @ head_weight.T + head_bias.
        num_classes : int, optional
            C without a head (default: the largest label + 1).
        name : str
            How tables and messages name these activations (a file's name is its path).
        **header
            Further `ActivationHeader` fields: dataset, arch, seed, epoch, layer, config.

        Raises
        ------
        InputError
            Shapes that do not fit together, non-finite values, or labels outside [0, C).
        """
        given = [(s, pair) for s, pair in (("train", train), ("test", test)) if pair is not None]
        if not given:
            raise InputError(f"{name}: give at least one split (train= or test=)")
        if (head_weight is None) != (head_bias is None):
            raise InputError(f"{name}: give both the head's weight and bias, or neither")
        weight = bias = None
        if head_weight is not None and head_bias is not None:
            weight = np.asarray(head_weight, dtype=np.float32)
            bias = np.asarray(head_bias, dtype=np.float32)
            if weight.ndim != 2 or bias.shape != (weight.shape[0],):
                raise InputError(f"{name}: head weight (C, W) and bias (C,) expected, got {weight.shape} and {bias.shape}")
            check_finite(name, "head/weight", weight)
            check_finite(name, "head/bias", bias)
            classes, width = weight.shape
        else:
            width = np.shape(given[0][1][0])[-1]
            classes = num_classes or int(max(np.max(np.asarray(pair[1]), initial=0) for _, pair in given)) + 1
        arrays: dict[str, SplitArrays] = {}
        for split, pair in given:
            features = np.asarray(pair[0], dtype=np.float32)
            labels = np.asarray(pair[1])
            if features.ndim != 2 or features.shape[1] != width or labels.shape != (features.shape[0],):
                raise InputError(f"{name}: {split} features (N, {width}) and labels (N,) expected, "
                                 f"got {features.shape} and {labels.shape}")
            if features.shape[0] < 2:
                raise InputError(f"{name}: split {split!r} has {features.shape[0]} rows; at least 2 are needed")
            check_finite(name, f"{split}/features", features)
            labels = check_labels(name, split, labels, classes)
            logits = None if weight is None or bias is None else features @ weight.T + bias
            arrays[split] = SplitArrays(features, logits, labels)
        meta = ActivationHeader(width=width, num_classes=classes, splits={s: len(a.labels) for s, a in arrays.items()},
                                has_head=weight is not None, has_logits=weight is not None, **header)
        return cls(meta, weight, bias, arrays, name)

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        check_head(self)
        assert self.head_weight is not None and self.head_bias is not None  # has_head
        return self.head_weight, self.head_bias

    def labels(self, split: str) -> np.ndarray:
        check_split(self, split)
        return self.splits[split].labels

    def logits(self, split: str) -> np.ndarray:
        check_split(self, split)
        check_logits(self)
        logits = self.splits[split].logits
        assert logits is not None  # has_logits
        return logits

    def features(self, split: str) -> np.ndarray:
        check_split(self, split)
        return self.splits[split].features

    def iter_blocks(self, split: str, rows: int = 4096) -> Iterator[np.ndarray]:
        features = self.features(split)
        for start in range(0, len(features), rows):
            yield features[start : start + rows]


def read_activations(path: str | os.PathLike[str]) -> Activations:
    """Load a whole activation file into memory (validated), e.g. for a notebook."""
    file = ActivationFile(path)
    weight, bias = file.head() if file.header.has_head else (None, None)
    return Activations(file.header, weight, bias, {split: file.split(split) for split in file.header.splits}, file.name)

def save_activations(acts: Activations, path: str | os.PathLike[str]) -> Path:
    """Write in-memory activations to an activation file (atomically)."""
    streams = {split: (len(a.labels), iter([(a.features, a.logits, a.labels)])) for split, a in acts.splits.items()}
    return write_activations(path, acts.header, acts.head_weight, acts.head_bias, streams)
