"""The ensemble table (`ensemble.parquet`) and the member activation files it is computed from.

Table: long/tidy, one row per measured value, metadata ``kind = "ensemble"`` (see `io.tables.provenance`).

=============  =======  ==========================================================================
column         type     meaning
=============  =======  ==========================================================================
kind           string   what was measured (below)
width          int64    last-layer width of each member (a network, or a chunk of one)
members        int64    number of members combined
repeat         int64    which draw of members (or, for ``wide``, the network's seed)
split          string   ``train`` or ``test``
metric         string   ``accuracy``, ``error``, ``cross_entropy``; ``loss``/``bias``/``variance``
value          float64
=============  =======  ==========================================================================

Kinds (``width * members`` is always the total last-layer width combined):

- ``ensemble``: K networks of one width drawn from the pool of seeds; ``repeat`` numbers the draws
  (all subsets when there are no more than ``--repeats`` of them).
- ``wide``: each network alone; members = 1, repeat = its seed.
- ``chunk-average``: the internal ensemble of K disjoint random chunks of w neurons of the *widest*
  networks (width = w, members = K); repeat = seed position in the pool * repeats + draw.
- ``error-inf``: one row, split ``test``, metric ``error``: the largest ensemble of the widest networks
  (width = W, members = its pool). `read_error_inf` reads it.
- ``bias-variance``: per width and split, metrics ``loss``, ``bias``, ``variance`` of the whole pool
  (members = pool, repeat 0); see `analysis.ensembles.bias_variance`.
- ``same-total-width``: ensembles of W / w networks of width w, W the widest width (same rows as
  ``ensemble`` for that size); compare with the ``wide`` rows of width W.
- ``same-params``: ensembles of K networks of width w with about the parameters of one network of the
  widest width W; K = round(P(W) / P(w)).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import ActivationInfo, open_activations
from mitosis_cli.io.tables import read_table, write_table

TABLE_KIND = "ensemble"
KINDS = ("ensemble", "wide", "chunk-average", "error-inf", "bias-variance", "same-total-width", "same-params")
METRICS = ("accuracy", "error", "cross_entropy", "loss", "bias", "variance")
SCHEMA = pa.schema([
    ("kind", pa.string()),
    ("width", pa.int64()),
    ("members", pa.int64()),
    ("repeat", pa.int64()),
    ("split", pa.string()),
    ("metric", pa.string()),
    ("value", pa.float64()),
])
COLUMNS = tuple(SCHEMA.names)


@dataclass(frozen=True)
class Member:
    """One network of an ensemble pool: its file and validated attributes."""

    path: Path
    info: ActivationInfo

    @property
    def width(self) -> int:
        return self.info.width

    @property
    def seed(self) -> int:
        return self.info.seed


@dataclass(frozen=True)
class MemberSet:
    """Networks that saw the same samples: their logits per split, stacked in `members` order."""

    members: list[Member]
    labels: dict[str, np.ndarray]  # split -> (N,) int64
    logits: dict[str, np.ndarray]  # split -> (P, N, C) float32

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.labels)

    def pools(self) -> dict[int, list[int]]:
        """Width -> indices into `members` of that width, ordered by seed; widths ascending."""
        by_width: dict[int, list[int]] = {}
        for i in sorted(range(len(self.members)), key=lambda i: (self.members[i].width, self.members[i].seed)):
            by_width.setdefault(self.members[i].width, []).append(i)
        return by_width


def _read_logits(path: Path, info: ActivationInfo, h5: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    # Only logits and labels: an ensemble never needs the (much larger) features of every member.
    logits = h5[f"{split}/logits"][...].astype(np.float32, copy=False)
    labels = h5[f"{split}/labels"][...].astype(np.int64, copy=False)
    if not np.isfinite(logits).all():
        raise InputError(f"{path}: /{split}/logits holds NaN or Inf values")
    if labels.min() < 0 or labels.max() >= info.num_classes:
        raise InputError(f"{path}: /{split}/labels outside [0, {info.num_classes})")
    return logits, labels


def _same(first: Member, other: Member, what: str, a: Any, b: Any) -> None:
    if a != b:
        raise InputError(f"{other.path}: {what} is {b!r} but {first.path} has {a!r}; "
                         "ensemble members must be evaluated on the same samples")


def load_members(paths: Sequence[str | os.PathLike[str]]) -> MemberSet:
    """Read the logits and labels of every member, refusing sets that did not see the same samples.

    Checks, each failing with one `InputError` line naming the file: at least two files; the same splits,
    number of classes, data set, and sample count; real inputs (the Gaussian-noise control draws new inputs
    per seed); identical labels in the same order on every split; no two members of one width with the
    same seed (the same network twice would fake an independent member).
    """
    if len(paths) < 2:
        raise InputError(f"an ensemble needs at least 2 activation files (networks trained with different seeds), got {len(paths)}")
    members: list[Member] = []
    labels: dict[str, np.ndarray] = {}
    logits: dict[str, list[np.ndarray]] = {}
    seen: dict[tuple[int, int], Path] = {}
    for raw in paths:
        path = Path(raw)
        with open_activations(path) as (h5, info):
            member = Member(path, info)
            if info.attrs.get("inputs", "data") != "data":
                raise InputError(f"{path}: activations of {info.attrs['inputs']!r} inputs (a control); "
                                 "its samples differ per seed, so it cannot be ensembled")
            if members:
                first = members[0]
                _same(first, member, "the set of splits", sorted(first.info.splits), sorted(info.splits))
                _same(first, member, "the number of classes", first.info.num_classes, info.num_classes)
                _same(first, member, "the data set", first.info.dataset, info.dataset)
                for split, n in info.splits.items():
                    _same(first, member, f"the number of {split} samples", first.info.splits[split], n)
            key = (info.width, info.seed)
            if key in seen:
                raise InputError(f"{path}: width {info.width} seed {info.seed} was already given by {seen[key]}; "
                                 "pass each network once (members need different seeds)")
            seen[key] = path
            for split in info.splits:
                split_logits, split_labels = _read_logits(path, info, h5, split)
                if split not in labels:
                    labels[split] = split_labels
                elif not np.array_equal(labels[split], split_labels):
                    first_diff = int(np.argmax(labels[split] != split_labels))
                    raise InputError(f"{path}: {split} labels differ from {members[0].path} (first at sample {first_diff}); "
                                     "members must see the same samples in the same order")
                logits.setdefault(split, []).append(split_logits)
            members.append(member)
    return MemberSet(members, labels, {split: np.stack(arrays) for split, arrays in logits.items()})


@dataclass
class EnsembleRows:
    """Rows of the ensemble table, gathered column by column."""

    columns: dict[str, list[Any]] = field(default_factory=lambda: {name: [] for name in COLUMNS})

    def add(self, kind: str, width: int, members: int, repeat: int, split: str, values: dict[str, float]) -> None:
        """One row per metric in `values`."""
        if kind not in KINDS:
            raise ValueError(f"unknown ensemble table kind {kind!r}")
        for metric, value in values.items():
            if metric not in METRICS:
                raise ValueError(f"unknown ensemble table metric {metric!r}")
            for name, item in zip(COLUMNS, (kind, width, members, repeat, split, metric, value)):
                self.columns[name].append(item)

    def __len__(self) -> int:
        return len(self.columns["kind"])

    def to_table(self) -> pa.Table:
        return pa.table({name: pa.array(values, type=SCHEMA.field(name).type) for name, values in self.columns.items()},
                        schema=SCHEMA)


def write_ensemble_table(path: str | os.PathLike[str], rows: EnsembleRows, meta: dict[str, Any]) -> Path:
    """Write the table atomically with `meta` (from ``provenance("ensemble", ...)``) in its metadata."""
    if meta.get("kind") != TABLE_KIND:
        raise ValueError(f"metadata kind must be {TABLE_KIND!r}, got {meta.get('kind')!r}")
    return write_table(path, rows.to_table(), meta)


def read_ensemble_table(path: str | os.PathLike[str]) -> tuple[pa.Table, dict[str, Any]]:
    """Read and validate an ensemble table: kind, columns, column types and known kind/metric values."""
    table, meta = read_table(path, kind=TABLE_KIND, columns=COLUMNS)
    for name in COLUMNS:
        have = table.schema.field(name).type
        want = SCHEMA.field(name).type
        if not (have == want or (pa.types.is_large_string(have) and want == pa.string())):
            raise InputError(f"{path}: column {name!r} has type {have}, expected {want}")
    for name, known in (("kind", KINDS), ("metric", METRICS)):
        unknown = sorted(set(table.column(name).to_pylist()) - set(known))
        if unknown:
            raise InputError(f"{path}: unknown {name} value(s) {', '.join(map(repr, unknown))}")
    return table, meta


def read_error_inf(path: str | os.PathLike[str]) -> float:
    """error_inf from an ensemble table: the value of its rows kind == "error-inf", metric "error", split "test".

    Raises
    ------
    InputError
        When the table is not an ensemble table or has no (or several different) such value.
    """
    table, _ = read_table(path, "ensemble", ("kind", "metric", "split", "value"))
    rows = table.filter(pc.and_(pc.and_(pc.equal(table["kind"], "error-inf"), pc.equal(table["metric"], "error")),
                                pc.equal(table["split"], "test")))
    try:
        values = np.unique(np.asarray(rows["value"].to_numpy(zero_copy_only=False), dtype=np.float64))
    except (ValueError, TypeError):  # a foreign table whose value column holds words
        raise InputError(f"{path}: column 'value' is not numeric (type {table.schema.field('value').type})") from None
    values = values[np.isfinite(values)]
    if values.size != 1:
        found = "no" if values.size == 0 else f"{values.size} different"
        raise InputError(f"{path}: {found} error-inf value(s) (rows kind='error-inf', metric='error', split='test')",
                         hint="run `mitosis ensemble` with enough seeds, or pass --error-inf")
    return float(values[0])


def matches_request(path: str | os.PathLike[str], meta: dict[str, Any]) -> bool:
    """Whether an existing table at `path` was made from the same inputs (by sha256, any order) and options.

    Raises `InputError` when `path` exists but is not an ensemble table, so it is never overwritten silently.
    """
    path = Path(path)
    if not path.exists():
        return False
    try:
        _, old = read_ensemble_table(path)
    except InputError as err:
        raise InputError(f"{err}; refusing to overwrite it", hint="remove it, pick another -o, or pass --force") from None

    def key(m: dict[str, Any]) -> tuple[list[str], str]:
        shas = sorted(item.get("sha256", "") for item in m.get("inputs", []))
        return shas, json.dumps(m.get("options", {}), sort_keys=True)

    return key(old) == key(meta)
