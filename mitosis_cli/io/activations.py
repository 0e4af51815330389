"""The HDF5 activation file: the contract between `extract` and every later stage.

Layout (format "mitosis-activations", version 1)::

    /                  attrs: format, format_version, mitosis_version, created_utc, width, num_classes,
                              dataset, arch, seed, epoch, layer, config (JSON), source_sha256, inputs
                              (+ shard, shard_rows for a part written by `extract --shard`;
                              + class_names (JSON list) when the labels have names)
    /head/weight       float32 (C, W)   optional (features imported without their network's head)
    /head/bias         float32 (C,)     with /head/weight
    /<split>/features  float32 (N, W)   row-block chunks
    /<split>/logits    float32 (N, C)   always with a head; optional without one
    /<split>/labels    int64   (N,)

`<split>` is ``train`` and/or ``test``. `ActivationHeader` is the one description of the root
attributes (`to_attrs` / `from_attrs`); `ActivationFile` is the one way to read a file (every HDF5
access of mitosis is here), and `activation_arrays.Activations` holds the same content in memory.
Both offer the same readers (`ActivationSource`), so a stage measures either.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from mitosis_cli import __version__
from mitosis_cli.errors import InputError
from mitosis_cli.io.atomic import atomic_path, check_room
from mitosis_cli.io.checks import check_finite, check_labels, check_shard, is_int
from mitosis_cli.io.hdf5 import hdf5_writer
from mitosis_cli.io.paths import input_file
from mitosis_cli.io.stamp import Stamp

FORMAT = "mitosis-activations"
FORMAT_VERSION = 1
SPLITS = ("train", "test")
_CHUNK_BYTES = 1 << 20  # ~1 MiB row blocks: cheap to stream, small enough to cache

Batch = tuple[np.ndarray, "np.ndarray | None", np.ndarray]  # features, logits (None in a file without), labels


def network_label(arch: str, width: int, seed: int | None = None, epoch: int | None = None, dataset: str = "") -> str:
    """A network named by what it is, not by its file: ``mlp-2-batchnorm w512 s0 e100`` (``cifar10`` first when given).

    Unknown parts (a negative seed or epoch, an empty arch) are left out. Printed tables, progress lines,
    ``--json`` and the report's figures all name networks this way.
    """
    parts = [dataset, arch or "network", f"w{width}"]
    parts += [f"s{seed}"] if seed is not None and seed >= 0 else []
    parts += [f"e{epoch}"] if epoch is not None and epoch >= 0 else []
    return " ".join(p for p in parts if p)


def network_labels(networks: Iterable[Mapping[str, Any]]) -> list[str]:
    """`network_label` of each network (a mapping of arch, width, seed, epoch, dataset and source, as a
    table's row holds them), with the data set when they come from more than one, and the source where two
    would still read alike (the same network in two folders)."""
    rows = list(networks)
    several = len({row.get("dataset") for row in rows}) > 1

    def number(value: Any) -> int | None:
        return None if value is None or value != value else int(value)  # a missing value reads back as None or NaN

    labels = [network_label(str(row.get("arch") or ""), int(row["width"]), number(row.get("seed")), number(row.get("epoch")),
                            str(row.get("dataset") or "") if several else "") for row in rows]
    return [f"{label} ({row.get('source')})" if labels.count(label) > 1 else label
            for label, row in zip(labels, rows, strict=True)]


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
    class_names : tuple of str
        The name of each label (e.g. the class folders of an image set); empty when unknown.
    has_head, has_logits : bool
        Whether the file holds the trained head (/head) and logits; both are read from the layout.
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
    class_names: tuple[str, ...] = ()
    has_head: bool = True
    has_logits: bool = True

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
        if self.class_names:
            attrs["class_names"] = json.dumps(list(self.class_names))
        return attrs

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], splits: Mapping[str, int], where: str, has_head: bool = True,
                   has_logits: bool = True) -> ActivationHeader:
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
            if not is_int(attrs.get(key)) or attrs[key] < 1:
                raise InputError(f"{where}: attribute {key!r} must be a positive integer, found {attrs.get(key)!r}")
        for key in ("seed", "epoch"):
            if key in attrs and not (is_int(attrs[key]) and -(1 << 63) <= attrs[key] < (1 << 63)):
                raise InputError(f"{where}: attribute {key!r} must be a 64-bit integer, found {attrs[key]!r}")
        try:
            config = json.loads(attrs.get("config", "{}") or "{}")
            shard_rows = json.loads(attrs.get("shard_rows", "{}") or "{}")
            names = json.loads(attrs.get("class_names", "[]") or "[]")
        except (json.JSONDecodeError, TypeError):
            raise InputError(f"{where}: attribute 'config', 'shard_rows' or 'class_names' is not valid JSON") from None
        if not isinstance(config, dict) or not isinstance(shard_rows, dict):
            raise InputError(f"{where}: attributes 'config' and 'shard_rows' must hold JSON objects")
        named = isinstance(names, list) and all(isinstance(n, str) for n in names)
        if not named or len(names) not in (0, attrs["num_classes"]):
            raise InputError(f"{where}: attribute 'class_names' must list one name per class ({attrs['num_classes']})")
        if shard := str(attrs.get("shard", "") or ""):
            check_shard(where, shard, shard_rows, splits)
        text = {key: str(attrs.get(key, default)) for key, default in
                (("dataset", ""), ("arch", ""), ("layer", ""), ("source_sha256", ""), ("inputs", "data"), ("shard", ""),
                 ("mitosis_version", ""), ("created_utc", ""))}
        return cls(width=attrs["width"], num_classes=attrs["num_classes"], seed=int(attrs.get("seed", -1)),
                   epoch=int(attrs.get("epoch", -1)), config=config, shard_rows=shard_rows, splits=dict(splits),
                   class_names=tuple(names), has_head=has_head, has_logits=has_logits, **text)

    @property
    def label(self) -> str:
        """What the network is, for people: ``mlp-2-batchnorm w512 s0 e100`` (see `network_label`)."""
        return network_label(self.arch, self.width, self.seed, self.epoch)

    def stamp(self) -> Stamp:
        """What an extraction of this file was made from: checkpoint, configuration and controls, splits, shard."""
        return Stamp.of("activations", [self.source_sha256], {"config": dict(self.config), "splits": sorted(self.splits),
                                                              "shard": self.shard})


@dataclass(frozen=True)
class SplitArrays:
    """One split held in memory."""

    features: np.ndarray  # (N, W) float32
    logits: np.ndarray | None  # (N, C) float32; None without a head and without imported logits
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


def check_split(source: ActivationSource, split: str) -> None:
    if split not in source.header.splits:
        raise InputError(f"{source.name}: has no split {split!r} (found: {', '.join(source.header.splits)})")


def check_head(source: ActivationSource) -> None:
    if not source.header.has_head:
        raise InputError(f"{source.name}: has no head (/head/weight, /head/bias): what reads the trained head "
                         "(chunk accuracy, the excess error, ensembles) needs it",
                         hint="import the head too (head_weight, head_bias), or measure what needs no head")


def check_logits(source: ActivationSource) -> None:
    if not source.header.has_logits:
        raise InputError(f"{source.name}: has no logits (and no head to compute them): ensembles need them")


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
    has_head = "head" in h5
    expected = {"head/weight": (n_classes, width), "head/bias": (n_classes,)} if has_head else {}
    splits: dict[str, int] = {}
    with_logits = {name for name in SPLITS if name in h5 and isinstance(h5[name], h5py.Group) and "logits" in h5[name]}
    for name in SPLITS:
        if name not in h5:
            continue
        if not isinstance(h5[name], h5py.Group) or "features" not in h5[name]:
            raise InputError(f"{path}: split {name!r} has no 'features' dataset")
        feats = h5[name]["features"]
        n = feats.shape[0] if isinstance(feats, h5py.Dataset) and feats.ndim == 2 else -1
        expected.update({f"{name}/features": (n, width), f"{name}/labels": (n,)})
        if has_head or with_logits:  # logits in every split, or (without a head) in none
            expected[f"{name}/logits"] = (n, n_classes)
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
    return ActivationHeader.from_attrs(attrs, splits, str(path), has_head=has_head, has_logits=bool(with_logits) or has_head)


@contextmanager
def _opened(path: Path) -> Iterator[tuple[h5py.File, ActivationHeader]]:
    """Open and validate; any failure of h5py on a damaged file becomes one `InputError` naming it."""
    input_file(path, "an activation file (.h5)")
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
        check_head(self)
        with _opened(self.path) as (h5, _):
            weight, bias = h5["head/weight"][...], h5["head/bias"][...]
        check_finite(self.name, "head/weight", weight)
        check_finite(self.name, "head/bias", bias)
        return weight.astype(np.float32), bias.astype(np.float32)

    def labels(self, split: str) -> np.ndarray:
        """Labels (N,) int64, checked to lie in [0, C)."""
        check_split(self, split)
        with _opened(self.path) as (h5, _):
            labels = h5[f"{split}/labels"][...]
        return check_labels(self.name, split, labels, self.header.num_classes)

    def logits(self, split: str) -> np.ndarray:
        """Logits (N, C) float32, finite."""
        check_split(self, split)
        check_logits(self)
        with _opened(self.path) as (h5, _):
            logits = h5[f"{split}/logits"][...]
        check_finite(self.name, f"{split}/logits", logits)
        return logits.astype(np.float32, copy=False)

    def features(self, split: str) -> np.ndarray:
        """The whole split's features (N, W) float32 in memory (`iter_blocks` streams them instead)."""
        return np.concatenate(list(self.iter_blocks(split, rows=max(1, self.header.splits.get(split, 1)))))

    def iter_blocks(self, split: str, rows: int = 4096) -> Iterator[np.ndarray]:
        """(rows, W) float32 feature blocks in order, each checked to be finite."""
        check_split(self, split)
        with _opened(self.path) as (h5, _):
            ds = h5[f"{split}/features"]
            for start in range(0, ds.shape[0], rows):
                block = ds[start : start + rows]
                check_finite(self.name, f"{split}/features", block)
                yield block.astype(np.float32, copy=False)

    def split(self, split: str) -> SplitArrays:
        """One split in memory, validated."""
        logits = self.logits(split) if self.header.has_logits else None
        return SplitArrays(self.features(split), logits, self.labels(split))


# ---------------------------------------------------------------------------------------------------
# Writing


def _row_chunk(n_rows: int, n_cols: int) -> tuple[int, int]:
    rows = max(1, min(n_rows, _CHUNK_BYTES // (4 * max(n_cols, 1))))
    return (rows, n_cols)


def write_activations(
    path: str | os.PathLike[str],
    header: ActivationHeader,
    head_weight: np.ndarray | None,
    head_bias: np.ndarray | None,
    splits: Mapping[str, tuple[int, Iterable[Batch]]],
) -> Path:
    """Stream batches of each split into a new activation file, atomically.

    Parameters
    ----------
    path : path-like
        Target file; written to a temporary file beside it and renamed at the end.
    header : ActivationHeader
        The root attributes (its `splits` is ignored: the rows come from `splits`).
    head_weight, head_bias : ndarray or None
        The trained last linear layer, shapes (C, W) and (C,); None for features without their head.
    splits : mapping
        ``{name: (n_rows, batches)}``; `batches` yields (features, logits, labels) row blocks in order,
        logits None when `header.has_logits` is false.
    """
    path = Path(path)
    width, n_classes = header.width, header.num_classes
    if (head_weight is None) != (head_bias is None) or (head_weight is not None and not header.has_logits):
        raise ValueError("a head needs both weight and bias, and a file with a head holds logits")
    if head_weight is not None and head_bias is not None and (
            head_weight.shape != (n_classes, width) or head_bias.shape != (n_classes,)):
        raise ValueError(f"head shapes {head_weight.shape}, {head_bias.shape} do not match C={n_classes}, W={width}")
    # refuse up front what the disk or `ulimit -f` cannot hold: the data, plus under 1 MiB of HDF5 metadata
    check_room(path, sum(n * (4 * (width + n_classes) + 8) for n, _ in splits.values()) + 4 * n_classes * (width + 1)
               + (1 << 20))
    with atomic_path(path) as tmp, hdf5_writer(tmp) as h5:
        h5.attrs.update(header.to_attrs())
        if head_weight is not None and head_bias is not None:
            h5.create_dataset("head/weight", data=np.asarray(head_weight, dtype=np.float32))
            h5.create_dataset("head/bias", data=np.asarray(head_bias, dtype=np.float32))
        for name, (n_rows, batches) in splits.items():
            grp = h5.create_group(name)
            feats = grp.create_dataset("features", (n_rows, width), np.float32,
                                       chunks=_row_chunk(n_rows, width) if n_rows else None)
            logits = grp.create_dataset("logits", (n_rows, n_classes), np.float32) if header.has_logits else None
            labels = grp.create_dataset("labels", (n_rows,), np.int64)
            start = 0
            for f, lg, lb in batches:
                stop = start + len(f)
                if stop > n_rows:
                    raise ValueError(f"split {name!r}: more rows than the declared {n_rows}")
                feats[start:stop] = f
                if logits is not None:
                    logits[start:stop] = lg
                labels[start:stop] = lb
                start = stop
            if start != n_rows:
                raise ValueError(f"split {name!r}: wrote {start} rows, declared {n_rows}")
            h5.flush()  # a failing write surfaces here, not when the split's datasets are released
    return path
