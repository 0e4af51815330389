"""The HDF5 activation file: the contract between `extract` and every later stage.

Layout (format "mitosis-activations", version 1)::

    /                  attrs: format, format_version, mitosis_version, created_utc, width, num_classes,
                              dataset, arch, seed, epoch, layer, config (JSON), source_sha256, inputs
                              (+ shard, shard_rows for a part written by `extract --shard`)
    /head/weight       float32 (C, W)
    /head/bias         float32 (C,)
    /<split>/features  float32 (N, W)   row-block chunks
    /<split>/logits    float32 (N, C)
    /<split>/labels    int64   (N,)

`<split>` is ``train`` and/or ``test``. `ActivationHeader` is the one description of the root
attributes (`to_attrs` / `from_attrs`); `ActivationFile` is the one way to read a file, and
`Activations` holds the same content in memory (for arrays that never were a file). Both offer the
same readers (`head`, `labels`, `logits`, `features`, `iter_blocks`), so a stage measures either.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from mitosis_cli import __version__
from mitosis_cli.errors import InputError, OutputError
from mitosis_cli.io.atomic import atomic_path
from mitosis_cli.io.stamp import Stamp

FORMAT = "mitosis-activations"
FORMAT_VERSION = 1
SPLITS = ("train", "test")
_CHUNK_BYTES = 1 << 20  # ~1 MiB row blocks: cheap to stream, small enough to cache

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # features, logits, labels


@dataclass(frozen=True)
class ActivationHeader:
    """The root attributes of an activation file, and the rows of each split it holds.

    Attributes
    ----------
    width, num_classes : int
        W (neurons of the layer) and C (classes of the head).
    dataset, arch, seed, epoch, layer : str, str, int, int, str
        What network and data the features come from; `layer` names the layer that was read.
    config : dict
        The training configuration (plus the extraction's controls).
    source_sha256 : str
        sha256 of the checkpoint the features were read from ("" when unknown).
    inputs : str
        ``data``, or ``gaussian-noise`` for the noise-input control.
    shard, shard_rows : str, dict
        ``"K/N"`` and split -> [start, stop, total rows] for a part written by ``extract --shard``.
    splits : dict
        Split name -> number of rows (filled from the datasets when read, by the writer when written).
    """

    width: int
    num_classes: int
    dataset: str = ""
    arch: str = ""
    seed: int = -1
    epoch: int = -1
    layer: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    source_sha256: str = ""
    inputs: str = "data"
    shard: str = ""
    shard_rows: Mapping[str, list[int]] = field(default_factory=dict)
    splits: Mapping[str, int] = field(default_factory=dict)
    mitosis_version: str = __version__
    created_utc: str = ""

    def to_attrs(self) -> dict[str, Any]:
        """The root attributes to write (a new creation time; shard attributes only for a shard)."""
        attrs: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "mitosis_version": __version__,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "width": self.width, "num_classes": self.num_classes, "dataset": self.dataset, "arch": self.arch,
            "seed": self.seed, "epoch": self.epoch, "layer": self.layer,
            "config": json.dumps(dict(self.config), sort_keys=True), "source_sha256": self.source_sha256,
            "inputs": self.inputs,
        }
        if self.shard:
            attrs |= {"shard": self.shard, "shard_rows": json.dumps(dict(self.shard_rows), sort_keys=True)}
        return attrs

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], splits: Mapping[str, int], where: str) -> ActivationHeader:
        """Validate root attributes (decoded to Python values) and build the header.

        Raises `InputError` naming `where` and the attribute when one is missing or of the wrong type.
        """
        if attrs.get("format") != FORMAT:
            raise InputError(f"{where}: not a mitosis activation file (format attribute is {attrs.get('format')!r}, "
                             f"expected {FORMAT!r})")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{where}: format_version {attrs.get('format_version')!r} is not supported "
                             f"(this mitosis reads {FORMAT_VERSION})")
        for key in ("width", "num_classes"):
            if not isinstance(attrs.get(key), int) or attrs[key] < 1:
                raise InputError(f"{where}: attribute {key!r} must be a positive integer, found {attrs.get(key)!r}")
        for key in ("seed", "epoch"):
            if key in attrs and not isinstance(attrs[key], int):
                raise InputError(f"{where}: attribute {key!r} must be an integer, found {attrs[key]!r}")
        try:
            config = json.loads(attrs.get("config", "{}") or "{}")
            shard_rows = json.loads(attrs.get("shard_rows", "{}") or "{}")
        except (json.JSONDecodeError, TypeError):
            raise InputError(f"{where}: attribute 'config' or 'shard_rows' is not valid JSON") from None
        if not isinstance(config, dict) or not isinstance(shard_rows, dict):
            raise InputError(f"{where}: attributes 'config' and 'shard_rows' must hold JSON objects")
        text = {key: str(attrs.get(key, default)) for key, default in
                (("dataset", ""), ("arch", ""), ("layer", ""), ("source_sha256", ""), ("inputs", "data"), ("shard", ""),
                 ("mitosis_version", ""), ("created_utc", ""))}
        return cls(width=attrs["width"], num_classes=attrs["num_classes"], seed=int(attrs.get("seed", -1)),
                   epoch=int(attrs.get("epoch", -1)), config=config, shard_rows=shard_rows, splits=dict(splits), **text)

    def stamp(self) -> Stamp:
        """What an extraction of this file was made from: checkpoint, configuration and controls, splits, shard."""
        return Stamp.of("activations", [self.source_sha256], {"config": dict(self.config), "splits": sorted(self.splits),
                                                              "shard": self.shard})


@dataclass(frozen=True)
class SplitArrays:
    """One split held in memory."""

    features: np.ndarray  # (N, W) float32
    logits: np.ndarray  # (N, C) float32
    labels: np.ndarray  # (N,) int64


class ActivationSource(Protocol):
    """What a stage reads from activations, whether a file (`ActivationFile`) or arrays (`Activations`)."""

    @property
    def name(self) -> str: ...  # the file's path, or the name given to arrays

    @property
    def header(self) -> ActivationHeader: ...

    def head(self) -> tuple[np.ndarray, np.ndarray]: ...

    def labels(self, split: str) -> np.ndarray: ...

    def logits(self, split: str) -> np.ndarray: ...

    def features(self, split: str) -> np.ndarray: ...

    def iter_blocks(self, split: str, rows: int = 4096) -> Iterator[np.ndarray]: ...


# ---------------------------------------------------------------------------------------------------
# Checks shared by files and arrays


def _check_split(source: ActivationSource, split: str) -> None:
    if split not in source.header.splits:
        raise InputError(f"{source.name}: has no split {split!r} (found: {', '.join(source.header.splits)})")


def _check_finite(name: str, key: str, block: np.ndarray) -> None:
    if not np.isfinite(block).all():
        raise InputError(f"{name}: /{key} holds NaN or Inf values")


def _check_labels(name: str, split: str, labels: np.ndarray, num_classes: int) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"{name}: /{split}/labels outside [0, {num_classes})")
    return labels.astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------------------
# Files


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _validate(path: Path, h5: h5py.File) -> ActivationHeader:
    attrs = {k: _attr(v) for k, v in h5.attrs.items()}
    width, n_classes = attrs.get("width"), attrs.get("num_classes")
    ActivationHeader.from_attrs(attrs, {}, str(path))  # the attributes first: the shapes below rely on them
    expected = {"head/weight": (n_classes, width), "head/bias": (n_classes,)}
    splits: dict[str, int] = {}
    for name in SPLITS:
        if name not in h5:
            continue
        if not isinstance(h5[name], h5py.Group) or "features" not in h5[name]:
            raise InputError(f"{path}: split {name!r} has no 'features' dataset")
        feats = h5[name]["features"]
        n = feats.shape[0] if isinstance(feats, h5py.Dataset) and feats.ndim == 2 else -1
        expected.update({f"{name}/features": (n, width), f"{name}/logits": (n, n_classes), f"{name}/labels": (n,)})
        splits[name] = n
    if not splits:
        raise InputError(f"{path}: no split found (expected a group named {' or '.join(SPLITS)})")
    for key, shape in expected.items():
        if key not in h5 or not isinstance(h5[key], h5py.Dataset):
            raise InputError(f"{path}: missing dataset /{key}")
        ds = h5[key]
        if ds.shape != shape:
            raise InputError(f"{path}: /{key} has shape {ds.shape}, expected {shape}")
        kind = "i" if key.endswith("labels") else "f"
        if ds.dtype.kind != kind:
            raise InputError(f"{path}: /{key} has dtype {ds.dtype}, expected {'int64' if kind == 'i' else 'float32'}")
    for name, n in splits.items():
        if n < 2:
            raise InputError(f"{path}: split {name!r} has {n} rows; at least 2 are needed")
    return ActivationHeader.from_attrs(attrs, splits, str(path))


@contextmanager
def _opened(path: Path) -> Iterator[tuple[h5py.File, ActivationHeader]]:
    """Open and validate; any failure of h5py on a damaged file becomes one `InputError` naming it."""
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
        # A valid signature over scrambled metadata or chunks fails while validating or reading, in this block.
        detail = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise InputError(f"{path}: damaged HDF5 file ({detail})") from err
    finally:
        h5.close()


class ActivationFile:
    """A validated activation file on disk. Each reader opens the file, checks what it reads, and closes it.

    Parameters
    ----------
    path : path-like
        The .h5 file; its layout is validated here (`InputError` naming the file when it is wrong).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with _opened(self.path) as (_, header):
            self.header = header

    @property
    def name(self) -> str:
        return str(self.path)

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        """The head weight (C, W) and bias (C,), float32 and finite."""
        with _opened(self.path) as (h5, _):
            weight, bias = h5["head/weight"][...], h5["head/bias"][...]
        _check_finite(self.name, "head/weight", weight)
        _check_finite(self.name, "head/bias", bias)
        return weight.astype(np.float32), bias.astype(np.float32)

    def labels(self, split: str) -> np.ndarray:
        """Labels (N,) int64, checked to lie in [0, C)."""
        _check_split(self, split)
        with _opened(self.path) as (h5, _):
            labels = h5[f"{split}/labels"][...]
        return _check_labels(self.name, split, labels, self.header.num_classes)

    def logits(self, split: str) -> np.ndarray:
        """Logits (N, C) float32, finite."""
        _check_split(self, split)
        with _opened(self.path) as (h5, _):
            logits = h5[f"{split}/logits"][...].astype(np.float32, copy=False)
        _check_finite(self.name, f"{split}/logits", logits)
        return logits

    def features(self, split: str) -> np.ndarray:
        """The whole split's features (N, W) float32 in memory (`iter_blocks` streams them instead)."""
        return np.concatenate(list(self.iter_blocks(split, rows=max(1, self.header.splits.get(split, 1)))))

    def iter_blocks(self, split: str, rows: int = 4096) -> Iterator[np.ndarray]:
        """(rows, W) float32 feature blocks in order, each checked to be finite."""
        _check_split(self, split)
        with _opened(self.path) as (h5, _):
            ds = h5[f"{split}/features"]
            for start in range(0, ds.shape[0], rows):
                block = ds[start : start + rows].astype(np.float32, copy=False)
                _check_finite(self.name, f"{split}/features", block)
                yield block

    def split(self, split: str) -> SplitArrays:
        """One split in memory, validated."""
        return SplitArrays(self.features(split), self.logits(split), self.labels(split))


# ---------------------------------------------------------------------------------------------------
# Arrays


@dataclass(frozen=True)
class Activations:
    """Activations held in memory: a header, the head, and the splits' arrays.

    Build them from your own arrays with `Activations.from_arrays`, or load a file with `read_activations`.
    """

    header: ActivationHeader
    head_weight: np.ndarray
    head_bias: np.ndarray
    splits: Mapping[str, SplitArrays]
    name: str = "arrays"

    @classmethod
    def from_arrays(
        cls, head_weight: np.ndarray, head_bias: np.ndarray, *, train: tuple[np.ndarray, np.ndarray] | None = None,
        test: tuple[np.ndarray, np.ndarray] | None = None, name: str = "arrays", **header: Any,
    ) -> Activations:
        """Activations from (features, labels) pairs per split and the head that reads the layer.

        Parameters
        ----------
        head_weight, head_bias : array (C, W), array (C,)
            The trained last linear layer.
        train, test : (features (N, W), labels (N,)), optional
            At least one split; logits are computed as features @ head_weight.T + head_bias.
        name : str
            How tables and messages name these activations (a file's name is its path).
        **header
            Further `ActivationHeader` fields: dataset, arch, seed, epoch, layer, config.

        Raises
        ------
        InputError
            Shapes that do not fit together, non-finite values, or labels outside [0, C).
        """
        weight = np.asarray(head_weight, dtype=np.float32)
        bias = np.asarray(head_bias, dtype=np.float32)
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise InputError(f"{name}: head weight (C, W) and bias (C,) expected, got {weight.shape} and {bias.shape}")
        classes, width = weight.shape
        _check_finite(name, "head/weight", weight)
        _check_finite(name, "head/bias", bias)
        arrays: dict[str, SplitArrays] = {}
        for split, pair in (("train", train), ("test", test)):
            if pair is None:
                continue
            features = np.asarray(pair[0], dtype=np.float32)
            labels = np.asarray(pair[1])
            if features.ndim != 2 or features.shape[1] != width or labels.shape != (features.shape[0],):
                raise InputError(f"{name}: {split} features (N, {width}) and labels (N,) expected, "
                                 f"got {features.shape} and {labels.shape}")
            if features.shape[0] < 2:
                raise InputError(f"{name}: split {split!r} has {features.shape[0]} rows; at least 2 are needed")
            _check_finite(name, f"{split}/features", features)
            labels = _check_labels(name, split, labels, classes)
            arrays[split] = SplitArrays(features, features @ weight.T + bias, labels)
        if not arrays:
            raise InputError(f"{name}: give at least one split (train= or test=)")
        meta = ActivationHeader(width=width, num_classes=classes, splits={s: len(a.labels) for s, a in arrays.items()},
                                **header)
        return cls(meta, weight, bias, arrays, name)

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        return self.head_weight, self.head_bias

    def labels(self, split: str) -> np.ndarray:
        _check_split(self, split)
        return self.splits[split].labels

    def logits(self, split: str) -> np.ndarray:
        _check_split(self, split)
        return self.splits[split].logits

    def features(self, split: str) -> np.ndarray:
        _check_split(self, split)
        return self.splits[split].features

    def iter_blocks(self, split: str, rows: int = 4096) -> Iterator[np.ndarray]:
        features = self.features(split)
        for start in range(0, len(features), rows):
            yield features[start : start + rows]


def read_activations(path: str | os.PathLike[str]) -> Activations:
    """Load a whole activation file into memory (validated), e.g. for a notebook."""
    file = ActivationFile(path)
    weight, bias = file.head()
    return Activations(file.header, weight, bias, {split: file.split(split) for split in file.header.splits}, file.name)


# ---------------------------------------------------------------------------------------------------
# Writing


def _row_chunk(n_rows: int, n_cols: int) -> tuple[int, int]:
    rows = max(1, min(n_rows, _CHUNK_BYTES // (4 * max(n_cols, 1))))
    return (rows, n_cols)


def _check_free_space(path: Path, data_bytes: int) -> None:
    """Refuse to start an HDF5 file the disk cannot hold: HDF5 crashes the interpreter (segmentation fault
    at exit) when a write fails for lack of space, so the one clean moment to say so is before it starts."""
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    need = data_bytes + (1 << 20)  # + HDF5 metadata, chunk index and attributes (well under 1 MiB here)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OutputError(f"cannot write {path}: No space left on device ({free} bytes free, about {need} needed)")


def write_activations(
    path: str | os.PathLike[str],
    header: ActivationHeader,
    head_weight: np.ndarray,
    head_bias: np.ndarray,
    splits: Mapping[str, tuple[int, Iterable[Batch]]],
) -> Path:
    """Stream batches of each split into a new activation file, atomically.

    Parameters
    ----------
    path : path-like
        Target file; written to a temporary file beside it and renamed at the end.
    header : ActivationHeader
        The root attributes (its `splits` is ignored: the rows come from `splits`).
    head_weight, head_bias : ndarray
        The trained last linear layer, shapes (C, W) and (C,).
    splits : mapping
        ``{name: (n_rows, batches)}``; `batches` yields (features, logits, labels) row blocks in order.
    """
    path = Path(path)
    width, n_classes = header.width, header.num_classes
    if head_weight.shape != (n_classes, width) or head_bias.shape != (n_classes,):
        raise ValueError(f"head shapes {head_weight.shape}, {head_bias.shape} do not match C={n_classes}, W={width}")
    _check_free_space(path, sum(n * (4 * (width + n_classes) + 8) for n, _ in splits.values()) + 4 * n_classes * (width + 1))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update(header.to_attrs())
        h5.create_dataset("head/weight", data=np.asarray(head_weight, dtype=np.float32))
        h5.create_dataset("head/bias", data=np.asarray(head_bias, dtype=np.float32))
        for name, (n_rows, batches) in splits.items():
            grp = h5.create_group(name)
            feats = grp.create_dataset("features", (n_rows, width), np.float32,
                                       chunks=_row_chunk(n_rows, width) if n_rows else None)
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


def save_activations(acts: Activations, path: str | os.PathLike[str]) -> Path:
    """Write in-memory activations to an activation file (atomically)."""
    streams = {split: (len(a.labels), iter([(a.features, a.logits, a.labels)])) for split, a in acts.splits.items()}
    return write_activations(path, acts.header, acts.head_weight, acts.head_bias, streams)


# ---------------------------------------------------------------------------------------------------
# Shards


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
    weight, bias = first.head()

    def stream(split: str) -> Iterator[Batch]:
        for file in ordered:
            logits, labels = file.logits(split), file.labels(split)  # (N, C) and (N,): small beside the features
            for start, block in zip(range(0, file.header.splits[split], rows), file.iter_blocks(split, rows)):
                yield block, logits[start : start + rows], labels[start : start + rows]

    header = dataclasses.replace(first.header, shard="", shard_rows={})
    return write_activations(out, header, weight, bias, {s: (totals[s], stream(s)) for s in first.header.splits})


def _shard_span(file: ActivationFile, split: str) -> tuple[int, int, int]:
    """[start, stop, total rows] of a shard's split, checked to be three integers."""
    span = file.header.shard_rows.get(split)
    if not (isinstance(span, list) and len(span) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in span)):
        raise InputError(f"{file.path}: attribute 'shard_rows' lacks [start, stop, total] for split {split!r}")
    return span[0], span[1], span[2]
