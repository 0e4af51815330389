"""Shards of one extraction (`extract --shard K/N`) and joining them into one activation file."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import ActivationFile, Batch, write_activations


def shard_range(n_rows: int, shard: int, shards: int) -> tuple[int, int]:
    """Rows [start, stop) of shard `shard` (0-based) of `shards` nearly equal contiguous parts."""
    return n_rows * shard // shards, n_rows * (shard + 1) // shards


def merge_shards(parts: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], rows: int = 4096) -> Path:
    """Concatenate the shards of one extraction (`extract --shard K/N`) into one activation file.

    Every part must come from the same checkpoint and options, the shards 0..N-1 must each be there
    once, and their rows must tile each split; the result has no shard attributes, so it is the same
    file a single `extract` writes (up to its creation time).
    """
    files = [ActivationFile(p) for p in parts]
    keyed: dict[int, list[tuple[int, ActivationFile]]] = {}
    for file in files:
        if not file.header.shard:
            raise InputError(f"{file.path}: not a shard (no 'shard' attribute; made by `mitosis extract --shard K/N`)")
        k, _, n = file.header.shard.partition("/")
        keyed.setdefault(int(k), []).append((int(n), file))
    first = files[0]
    total_shards = {n for items in keyed.values() for n, _ in items}
    if len(total_shards) != 1:
        raise InputError(f"the parts disagree on the number of shards ({', '.join(map(str, sorted(total_shards)))})")
    (n_shards,) = total_shards
    missing = sorted(set(range(n_shards)) - set(keyed))
    doubled = sorted(k for k, items in keyed.items() if len(items) > 1)
    if missing or doubled:
        raise InputError(f"shards of {n_shards}: " + "; ".join(
            ([f"missing {', '.join(map(str, missing))}"] if missing else [])
            + ([f"given twice {', '.join(map(str, doubled))}"] if doubled else [])))
    ordered = [keyed[k][0][1] for k in range(n_shards)]
    for file in ordered[1:]:
        for key in ("source_sha256", "config", "width", "num_classes", "inputs", "epoch"):
            if getattr(file.header, key) != getattr(first.header, key):
                raise InputError(f"{file.path}: its {key} differs from {first.path}'s: not shards of one extraction")
        if set(file.header.splits) != set(first.header.splits):
            raise InputError(f"{file.path}: holds splits {', '.join(file.header.splits)}, "
                             f"{first.path} holds {', '.join(first.header.splits)}")
    totals = {}
    for split in first.header.splits:
        position, total = 0, _shard_span(first, split)[2]
        for file in ordered:
            start, stop, _ = _shard_span(file, split)
            if start != position or stop - start != file.header.splits[split]:
                raise InputError(f"{file.path}: rows {start}-{stop} of {split!r} do not follow row {position}")
            position = stop
        if position != total:
            raise InputError(f"the shards hold {position} of the {total} rows of {split!r}")
        totals[split] = total
    weight, bias = first.head() if first.header.has_head else (None, None)

    def stream(split: str) -> Iterator[Batch]:
        for file in ordered:
            labels = file.labels(split)  # (N,) and (N, C): small beside the features
            logits = file.logits(split) if file.header.has_logits else None
            for start, block in zip(range(0, file.header.splits[split], rows), file.iter_blocks(split, rows), strict=True):
                yield block, None if logits is None else logits[start : start + rows], labels[start : start + rows]

    header = dataclasses.replace(first.header, shard="", shard_rows={})
    return write_activations(out, header, weight, bias, {s: (totals[s], stream(s)) for s in first.header.splits})


def _shard_span(file: ActivationFile, split: str) -> tuple[int, int, int]:
    """[start, stop, total rows] of a shard's split, checked to be three integers."""
    span = file.header.shard_rows.get(split)
    if not (isinstance(span, list) and len(span) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in span)):
        raise InputError(f"{file.path}: attribute 'shard_rows' lacks [start, stop, total] for split {split!r}")
    return span[0], span[1], span[2]
