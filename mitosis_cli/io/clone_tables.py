"""The `clones` and `clones-summary` Parquet tables written by `mitosis clones`, and the error_inf input.

clones.parquet (kind "clones"), one row per measured value:
    source, arch, dataset (str), width, seed, epoch (int64; epoch: training epoch of the weights),
    split, metric (str), chunk_size, repeat (int64),
    value (float64), n_points, k (int64, null where they do not apply).
clones-summary.parquet (kind "clones-summary"):
    source, arch, dataset, width, seed, epoch, split, metric, chunk_size (null for per-source rows),
    mean, std, sem (float64), n (int64), lo, hi (float64, null where n/a), rule (str, null where n/a),
    status (str: "ok" or what leaves a fitted number undetermined; the word of a `regime` row; null for
    plain means). Tables written before `status` existed read with a null one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from mitosis_cli.io.tables import read_table, write_table

CLONES_KIND = "clones"
SUMMARY_KIND = "clones-summary"

CLONES_SCHEMA = pa.schema([
    ("source", pa.string()), ("arch", pa.string()), ("dataset", pa.string()), ("width", pa.int64()),
    ("seed", pa.int64()), ("epoch", pa.int64()), ("split", pa.string()), ("metric", pa.string()),
    ("chunk_size", pa.int64()), ("repeat", pa.int64()), ("value", pa.float64()), ("n_points", pa.int64()), ("k", pa.int64()),
])
SUMMARY_SCHEMA = pa.schema([
    ("source", pa.string()), ("arch", pa.string()), ("dataset", pa.string()), ("width", pa.int64()),
    ("seed", pa.int64()), ("epoch", pa.int64()), ("split", pa.string()), ("metric", pa.string()),
    ("chunk_size", pa.int64()), ("mean", pa.float64()), ("std", pa.float64()), ("sem", pa.float64()), ("n", pa.int64()),
    ("lo", pa.float64()), ("hi", pa.float64()), ("rule", pa.string()), ("status", pa.string()),
])
_NOT_NULL = {
    CLONES_KIND: ("source", "width", "split", "metric", "chunk_size", "repeat"),
    SUMMARY_KIND: ("source", "split", "metric", "n"),
}


def _float_column(values: Sequence[Any]) -> pa.Array:
    """float64 column with NaN kept as NaN (a computed n/a), None as null."""
    return pa.array([None if v is None else float(v) for v in values], pa.float64())


def _build(schema: pa.Schema, kind: str, columns: Mapping[str, Sequence[Any]]) -> pa.Table:
    missing = [f.name for f in schema if f.name not in columns]
    if missing:
        raise ValueError(f"{kind} table: missing column(s) {', '.join(missing)}")
    lengths = {len(columns[f.name]) for f in schema}
    if len(lengths) > 1:
        raise ValueError(f"{kind} table: columns of different lengths {sorted(lengths)}")
    arrays = [_float_column(columns[f.name]) if f.type == pa.float64() else pa.array(list(columns[f.name]), f.type)
              for f in schema]
    table = pa.Table.from_arrays(arrays, schema=schema)
    for name in _NOT_NULL[kind]:
        if table[name].null_count:
            raise ValueError(f"{kind} table: column {name!r} has nulls")
    return table


def clones_table(columns: Mapping[str, Sequence[Any]]) -> pa.Table:
    """Build a validated `clones` table from column lists (keys: `CLONES_SCHEMA` names)."""
    return _build(CLONES_SCHEMA, CLONES_KIND, columns)


def summary_table(columns: Mapping[str, Sequence[Any]]) -> pa.Table:
    """Build a validated `clones-summary` table from column lists (keys: `SUMMARY_SCHEMA` names)."""
    return _build(SUMMARY_SCHEMA, SUMMARY_KIND, columns)


def write_clone_tables(folder: str | os.PathLike[str], clones: pa.Table, summary: pa.Table,
                       meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write clones.parquet and clones-summary.parquet atomically into `folder`.

    `meta` is a provenance dict (`io.tables.provenance`); its kind is set per table.
    """
    folder = Path(folder)
    first = write_table(folder / "clones.parquet", clones, {**meta, "kind": CLONES_KIND})
    second = write_table(folder / "clones-summary.parquet", summary, {**meta, "kind": SUMMARY_KIND})
    return first, second


def read_clones(path: str | os.PathLike[str]) -> tuple[pa.Table, dict[str, Any]]:
    """Read and validate a clones.parquet."""
    return read_table(path, CLONES_KIND, CLONES_SCHEMA.names, CLONES_SCHEMA)


def read_clones_summary(path: str | os.PathLike[str]) -> tuple[pa.Table, dict[str, Any]]:
    """Read and validate a clones-summary.parquet (one without the `status` column gets a null one)."""
    required = [name for name in SUMMARY_SCHEMA.names if name != "status"]
    table, meta = read_table(path, SUMMARY_KIND, required, SUMMARY_SCHEMA)
    if "status" not in table.column_names:
        table = table.append_column("status", pa.nulls(table.num_rows, pa.string()))
    return table, meta
