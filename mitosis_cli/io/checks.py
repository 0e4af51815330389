"""Checks of values read from files (activation files, imported dumps): finite numbers of a size float32 sums
can hold, labels within the classes, integer attributes, shard attributes. Each refusal is one `InputError`
line naming the file and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mitosis_cli.errors import InputError

MAX_MAGNITUDE = 1e15  # largest value read: float32 sums of products of such values stay far below 3.4e38
MAX_CLASSES = 1 << 20  # classes of a head or a data set: far beyond any (ImageNet-21k has 21,841)


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_finite(name: str, key: str, block: np.ndarray) -> None:
    """Refuse NaN, Inf and magnitudes above `MAX_MAGNITUDE` (before a cast to float32 could turn them into Inf)."""
    if not block.size:
        return
    if not np.isfinite(block).all():
        raise InputError(f"{name}: /{key} holds NaN or Inf values")
    largest = float(np.abs(block).max())
    if largest > MAX_MAGNITUDE:
        raise InputError(f"{name}: /{key} holds values of magnitude {largest:.3g}; mitosis reads values up to "
                         f"{MAX_MAGNITUDE:.0e} (float32 sums of their products would overflow)")


def check_labels(name: str, split: str, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels within [0, C), as int64."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"{name}: /{split}/labels outside [0, {num_classes})")
    return labels.astype(np.int64, copy=False)


def check_shard(where: str, shard: str, shard_rows: Mapping[str, Any], splits: Mapping[str, int]) -> None:
    """A shard's attributes: ``K/N`` with 0 <= K < N, and for each split its rows [start, stop, total]."""
    k, slash, n = shard.partition("/")
    if not (slash and k.isdigit() and n.isdigit() and int(k) < int(n)):
        raise InputError(f"{where}: attribute 'shard' must be K/N with 0 <= K < N, found {shard!r}")
    for split, rows in splits.items():  # known once the datasets are read
        if not (isinstance(span := shard_rows.get(split), list) and len(span) == 3 and all(is_int(v) for v in span)
                and 0 <= span[0] <= span[1] <= span[2] and span[1] - span[0] == rows):
            raise InputError(f"{where}: attribute 'shard_rows' needs [start, stop, total] of {split!r} ({rows} rows): {span!r}")
