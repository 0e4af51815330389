"""The ensemble table (`ensemble.parquet`): its schema, a row builder, the writer and the readers.

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

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mitosis_cli.errors import InputError
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
            for name, item in zip(COLUMNS, (kind, width, members, repeat, split, metric, value), strict=True):
                self.columns[name].append(item)

    def __len__(self) -> int:
        return len(self.columns["kind"])

    def to_table(self) -> pa.Table:
        return pa.table({name: pa.array(values, type=SCHEMA.field(name).type) for name, values in self.columns.items()},
                        schema=SCHEMA)


def write_ensemble_table(path: str | os.PathLike[str], table: pa.Table, meta: dict[str, Any]) -> Path:
    """Write the table (`EnsembleRows.to_table`) atomically with `meta` (``provenance("ensemble", ...)``)."""
    if meta.get("kind") != TABLE_KIND:
        raise ValueError(f"metadata kind must be {TABLE_KIND!r}, got {meta.get('kind')!r}")
    if table.schema != SCHEMA:
        raise ValueError("an ensemble table must have the ensemble schema (build it with EnsembleRows)")
    return write_table(path, table, meta)


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
    table, _ = read_table(path, "ensemble", ("kind", "metric", "split", "value"), SCHEMA)
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
