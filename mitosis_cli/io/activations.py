"""The HDF5 activation file: the contract between `extract` and every later stage.

Layout (format "mitosis-activations", version 1)::

    /                  attrs: format, format_version, mitosis_version, created_utc, width, num_classes,
                              dataset, arch, seed, epoch, layer, config (JSON), source_sha256, inputs
    /head/weight       float32 (C, W)
    /head/bias         float32 (C,)
    /<split>/features  float32 (N, W)   row-block chunks
    /<split>/logits    float32 (N, C)
    /<split>/labels    int64   (N,)

`<split>` is ``train`` and/or ``test``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mitosis_cli import __version__
from mitosis_cli.errors import InputError, OutputError
from mitosis_cli.io.atomic import atomic_path

FORMAT = "mitosis-activations"
FORMAT_VERSION = 1
SPLITS = ("train", "test")
_CHUNK_BYTES = 1 << 20  # ~1 MiB row blocks: cheap to stream, small enough to cache


@dataclass(frozen=True)
class ActivationMeta:
    """Provenance written to the root attributes of an activation file."""

    width: int
    num_classes: int
    dataset: str
    arch: str
    seed: int
    epoch: int
    layer: str
    config: dict[str, Any] = field(default_factory=dict)
    source_sha256: str = ""
    inputs: str = "data"  # "data", or "gaussian-noise" for the noise-input control
    shard: str = ""  # "K/N" when the file holds rows of shard K of N (extract --shard), else ""
    shard_rows: dict[str, list[int]] = field(default_factory=dict)  # split -> [start, stop, total rows]


@dataclass(frozen=True)
class SplitArrays:
    """One split held in memory."""

    features: np.ndarray  # (N, W) float32
    logits: np.ndarray  # (N, C) float32
    labels: np.ndarray  # (N,) int64


def _row_chunk(n_rows: int, n_cols: int) -> tuple[int, int]:
    rows = max(1, min(n_rows, _CHUNK_BYTES // (4 * max(n_cols, 1))))
    return (rows, n_cols)


Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # features, logits, labels


def _check_free_space(path: Path, data_bytes: int) -> None:
    """Refuse to start an HDF5 file the disk cannot hold: HDF5 crashes the interpreter (segmentation fault
    at exit) when a write fails for lack of space, so the one clean moment to say so is before it starts."""
    import shutil

    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    need = data_bytes + (1 << 20)  # + HDF5 metadata, chunk index and attributes (well under 1 MiB here)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OutputError(f"cannot write {path}: No space left on device ({free} bytes free, about {need} needed)")


def write_activations(
    path: str | os.PathLike[str],
    meta: ActivationMeta,
    head_weight: np.ndarray,
    head_bias: np.ndarray,
    splits: dict[str, tuple[int, Iterable[Batch]]],
) -> Path:
    """Stream batches of each split into a new activation file, atomically.

    Parameters
    ----------
    path : path-like
        Target file; written to a temporary file beside it and renamed at the end.
    meta : ActivationMeta
        Provenance for the root attributes.
    head_weight, head_bias : ndarray
        The trained last linear layer, shapes (C, W) and (C,).
    splits : dict
        ``{name: (n_rows, batches)}``; `batches` yields (features, logits, labels) row blocks in order.
    """
    path = Path(path)
    width, n_classes = meta.width, meta.num_classes
    if head_weight.shape != (n_classes, width) or head_bias.shape != (n_classes,):
        raise ValueError(f"head shapes {head_weight.shape}, {head_bias.shape} do not match C={n_classes}, W={width}")
    _check_free_space(path, sum(n * (4 * (width + n_classes) + 8) for n, _ in splits.values()) + 4 * n_classes * (width + 1))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            attrs = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "mitosis_version": __version__,
                "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "width": width,
                "num_classes": n_classes,
                "dataset": meta.dataset,
                "arch": meta.arch,
                "seed": meta.seed,
                "epoch": meta.epoch,
                "layer": meta.layer,
                "config": json.dumps(meta.config, sort_keys=True),
                "source_sha256": meta.source_sha256,
                "inputs": meta.inputs,
            }
            if meta.shard:
                attrs |= {"shard": meta.shard, "shard_rows": json.dumps(meta.shard_rows, sort_keys=True)}
            h5.attrs.update(attrs)
            h5.create_dataset("head/weight", data=np.asarray(head_weight, dtype=np.float32))
            h5.create_dataset("head/bias", data=np.asarray(head_bias, dtype=np.float32))
            for name, (n_rows, batches) in splits.items():
                grp = h5.create_group(name)
                feats = grp.create_dataset("features", (n_rows, width), np.float32, chunks=_row_chunk(n_rows, width) if n_rows else None)
                logits = grp.create_dataset("logits", (n_rows, n_classes), np.float32)
                labels = grp.create_dataset("labels", (n_rows,), np.int64)
                start = 0
                for f, lg, lb in batches:
                    stop = start + len(f)
                    if stop > n_rows:
                        raise ValueError(f"split {name!r}: more rows than the declared {n_rows}")
                    feats[start:stop] = f
                    logits[start:stop] = lg
                    labels[start:stop] = lb
                    start = stop
                if start != n_rows:
                    raise ValueError(f"split {name!r}: wrote {start} rows, declared {n_rows}")
    return path


@dataclass(frozen=True)
class ActivationInfo:
    """Validated root attributes and shapes of an activation file."""

    path: Path
    width: int
    num_classes: int
    dataset: str
    arch: str
    seed: int
    epoch: int
    layer: str
    config: dict[str, Any]
    splits: dict[str, int]  # split name -> number of rows
    attrs: dict[str, Any]


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _fail(path: Path, problem: str) -> InputError:
    return InputError(f"{path}: {problem}")


def _validate(path: Path, h5: h5py.File) -> ActivationInfo:
    attrs = {k: _attr(v) for k, v in h5.attrs.items()}
    if attrs.get("format") != FORMAT:
        raise _fail(path, f"not a mitosis activation file (format attribute is {attrs.get('format')!r}, expected {FORMAT!r})")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"format_version {attrs.get('format_version')!r} is not supported (this mitosis reads {FORMAT_VERSION})")
    for key in ("width", "num_classes"):
        if not isinstance(attrs.get(key), int) or attrs[key] < 1:
            raise _fail(path, f"attribute {key!r} must be a positive integer, found {attrs.get(key)!r}")
    width, n_classes = attrs["width"], attrs["num_classes"]
    expected = {"head/weight": (n_classes, width), "head/bias": (n_classes,)}
    splits: dict[str, int] = {}
    for name in SPLITS:
        if name not in h5:
            continue
        if not isinstance(h5[name], h5py.Group) or "features" not in h5[name]:
            raise _fail(path, f"split {name!r} has no 'features' dataset")
        feats = h5[name]["features"]
        n = feats.shape[0] if isinstance(feats, h5py.Dataset) and feats.ndim == 2 else -1
        expected.update({f"{name}/features": (n, width), f"{name}/logits": (n, n_classes), f"{name}/labels": (n,)})
        splits[name] = n
    if not splits:
        raise _fail(path, f"no split found (expected a group named {' or '.join(SPLITS)})")
    for key, shape in expected.items():
        if key not in h5 or not isinstance(h5[key], h5py.Dataset):
            raise _fail(path, f"missing dataset /{key}")
        ds = h5[key]
        if ds.shape != shape:
            raise _fail(path, f"/{key} has shape {ds.shape}, expected {shape}")
        kind = "i" if key.endswith("labels") else "f"
        if ds.dtype.kind != kind:
            raise _fail(path, f"/{key} has dtype {ds.dtype}, expected {'int64' if kind == 'i' else 'float32'}")
    for name, n in splits.items():
        if n < 2:
            raise _fail(path, f"split {name!r} has {n} rows; at least 2 are needed")
    try:
        config = json.loads(attrs.get("config", "{}") or "{}")
    except json.JSONDecodeError:
        raise _fail(path, "attribute 'config' is not valid JSON") from None
    return ActivationInfo(
        path=path,
        width=width,
        num_classes=n_classes,
        dataset=str(attrs.get("dataset", "")),
        arch=str(attrs.get("arch", "")),
        seed=int(attrs.get("seed", -1)),
        epoch=int(attrs.get("epoch", -1)),
        layer=str(attrs.get("layer", "")),
        config=config,
        splits=splits,
        attrs=attrs,
    )


@contextmanager
def open_activations(path: str | os.PathLike[str]) -> Iterator[tuple[h5py.File, ActivationInfo]]:
    """Open and validate an activation file; bad files raise `InputError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an activation file (.h5)")
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5 file ({str(err).split('(')[0].strip() or 'unreadable'})") from err
    try:
        yield h5, _validate(path, h5)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
        # h5py's errors on a damaged file (a valid signature over scrambled metadata or chunks) surface while
        # validating or reading, inside this block: one line naming the file, not an "unexpected error".
        raise InputError(f"{path}: damaged HDF5 file ({str(err).splitlines()[0][:120] if str(err) else type(err).__name__})") from err
    finally:
        h5.close()


def read_info(path: str | os.PathLike[str]) -> ActivationInfo:
    """Validate `path` and return its attributes and split sizes."""
    with open_activations(path) as (_, info):
        return info


def _check_split(info: ActivationInfo, split: str) -> None:
    if split not in info.splits:
        raise InputError(f"{info.path}: has no split {split!r} (found: {', '.join(info.splits)})")


def _check_finite(info: ActivationInfo, key: str, block: np.ndarray) -> None:
    if not np.isfinite(block).all():
        raise InputError(f"{info.path}: /{key} holds NaN or Inf values")


def read_head(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Return the head weight (C, W) and bias (C,), float32 and finite."""
    with open_activations(path) as (h5, info):
        weight, bias = h5["head/weight"][...], h5["head/bias"][...]
        _check_finite(info, "head/weight", weight)
        _check_finite(info, "head/bias", bias)
        return weight.astype(np.float32), bias.astype(np.float32)


def read_split(path: str | os.PathLike[str], split: str) -> SplitArrays:
    """Load one split into memory, validated: finite values, labels in [0, C)."""
    with open_activations(path) as (h5, info):
        _check_split(info, split)
        feats = h5[f"{split}/features"][...].astype(np.float32, copy=False)
        logits = h5[f"{split}/logits"][...].astype(np.float32, copy=False)
        labels = h5[f"{split}/labels"][...].astype(np.int64, copy=False)
        _check_finite(info, f"{split}/features", feats)
        _check_finite(info, f"{split}/logits", logits)
        if labels.min() < 0 or labels.max() >= info.num_classes:
            raise InputError(f"{path}: /{split}/labels outside [0, {info.num_classes})")
        return SplitArrays(feats, logits, labels)


def iter_feature_blocks(path: str | os.PathLike[str], split: str, rows: int = 4096) -> Iterator[np.ndarray]:
    """Yield (rows, W) float32 blocks of a split's features in order, checking each is finite."""
    with open_activations(path) as (h5, info):
        _check_split(info, split)
        ds = h5[f"{split}/features"]
        for start in range(0, ds.shape[0], rows):
            block = ds[start : start + rows].astype(np.float32, copy=False)
            _check_finite(info, f"{split}/features", block)
            yield block


def shard_range(n_rows: int, shard: int, shards: int) -> tuple[int, int]:
    """Rows [start, stop) of shard `shard` (0-based) of `shards` nearly equal contiguous parts."""
    return n_rows * shard // shards, n_rows * (shard + 1) // shards


def merge_shards(parts: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], rows: int = 4096) -> Path:
    """Concatenate the shards of one extraction (`extract --shard K/N`) into one activation file.

    Every part must come from the same checkpoint and options, the shards 0..N-1 must each be there
    once, and their rows must tile each split; the result has no shard attributes, so it is the same
    file a single `extract` writes (up to its creation time).
    """
    infos = [read_info(p) for p in parts]
    for info in infos:
        if not info.attrs.get("shard"):
            raise InputError(f"{info.path}: not a shard (no 'shard' attribute; made by `mitosis extract --shard K/N`)")
    keyed = {}
    for info in infos:
        k, _, n = str(info.attrs["shard"]).partition("/")
        keyed.setdefault(int(k), []).append((int(n), info))
    first = infos[0]
    total_shards = {n for items in keyed.values() for n, _ in items}
    if len(total_shards) != 1:
        raise InputError(f"the parts disagree on the number of shards ({', '.join(map(str, sorted(total_shards)))})")
    (n_shards,) = total_shards
    missing = sorted(set(range(n_shards)) - set(keyed))
    doubled = sorted(k for k, items in keyed.items() if len(items) > 1)
    if missing or doubled:
        raise InputError(f"shards of {n_shards}: " + "; ".join(
            ([f"missing {', '.join(map(str, missing))}"] if missing else []) + ([f"given twice {', '.join(map(str, doubled))}"] if doubled else [])))
    ordered = [keyed[k][0][1] for k in range(n_shards)]
    for info in ordered[1:]:
        for key in ("source_sha256", "config", "width", "num_classes", "inputs", "epoch"):
            if info.attrs.get(key) != first.attrs.get(key):
                raise InputError(f"{info.path}: its {key} differs from {first.path}'s: not shards of one extraction")
        if set(info.splits) != set(first.splits):
            raise InputError(f"{info.path}: holds splits {', '.join(info.splits)}, {first.path} holds {', '.join(first.splits)}")
    spans = [json.loads(info.attrs["shard_rows"]) for info in ordered]
    totals = {}
    for split in first.splits:
        position, total = 0, spans[0][split][2]
        for info, span in zip(ordered, spans):
            start, stop, _ = span[split]
            if start != position or stop - start != info.splits[split]:
                raise InputError(f"{info.path}: rows {start}-{stop} of {split!r} do not follow row {position}")
            position = stop
        if position != total:
            raise InputError(f"the shards hold {position} of the {total} rows of {split!r}")
        totals[split] = total
    weight, bias = read_head(first.path)

    def stream(split: str) -> Iterator[Batch]:
        for info in ordered:
            with open_activations(info.path) as (h5, _):
                group = h5[split]
                for start in range(0, info.splits[split], rows):
                    block = slice(start, start + rows)
                    yield group["features"][block], group["logits"][block], group["labels"][block]

    meta = ActivationMeta(
        width=first.width, num_classes=first.num_classes, dataset=first.dataset, arch=first.arch, seed=first.seed,
        epoch=first.epoch, layer=first.layer, config=first.config, source_sha256=str(first.attrs.get("source_sha256", "")),
        inputs=str(first.attrs.get("inputs", "data")),
    )
    return write_activations(out, meta, weight, bias, {s: (totals[s], stream(s)) for s in first.splits})
