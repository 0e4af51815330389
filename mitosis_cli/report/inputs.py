"""Read the tables a report is made from, sort them by kind and refuse bad files with one clear line."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mitosis_cli.errors import InputError
from mitosis_cli.io.clone_tables import CLONES_SCHEMA, SUMMARY_SCHEMA
from mitosis_cli.io.ensemble_tables import SCHEMA as ENSEMBLE_SCHEMA
from mitosis_cli.io.tables import check_column_types, file_sha256, read_table, table_stamp
from mitosis_cli.report.frame import Frame

# The columns the report needs from each kind of table (the contracts may carry more; those are kept).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "clones": ("source", "arch", "dataset", "width", "seed", "split", "metric", "chunk_size", "repeat", "value"),
    "clones-summary": ("source", "arch", "dataset", "width", "seed", "split", "metric", "chunk_size",
                       "mean", "sem", "n", "lo", "hi"),
    "ensemble": ("kind", "width", "members", "repeat", "split", "metric", "value"),
    "history": ("epoch", "train_loss", "train_error", "test_loss", "test_error"),
}

# The type of each column the report reads (words in a value column would draw an empty figure).
SCHEMAS: dict[str, pa.Schema] = {
    "clones": CLONES_SCHEMA, "clones-summary": SUMMARY_SCHEMA, "ensemble": ENSEMBLE_SCHEMA,
    "history": pa.schema([("epoch", pa.int64()), ("lr", pa.float64()), ("train_loss", pa.float64()),
                          ("train_error", pa.float64()), ("test_loss", pa.float64()), ("test_error", pa.float64()),
                          ("seconds", pa.float64())]),
}

# Columns that are never infinite (a diverged run's losses and an ensemble's cross-entropy may be).
FINITE_COLUMNS = {"clones": ("value",), "clones-summary": ("mean", "std", "sem")}

# Which figures each kind feeds, for the one "skipped" line per missing kind.
FIGURES_OF_KIND: dict[str, str] = {
    "clones": "chunk metrics, Information Imbalance",
    "clones-summary": "clone sizes and the number of clones against width",
    "ensemble": "ensemble accuracy",
    "history": "training curves",
}

# Activation files extracted from intermediate checkpoints are named after their epoch
# (checkpoints/epoch-0010.pt -> acts-epoch-0010.h5); this is how the report finds the epoch of a
# clones row when the table has no `epoch` column.
_EPOCH_IN_NAME = re.compile(r"(?:^|[^a-z])(?:epoch|ep)[-_]?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class InputFile:
    path: Path
    kind: str
    sha256: str
    rows: int


@dataclass(frozen=True)
class HistoryRun:
    """One training run's per-epoch history and the config it was trained with."""

    path: Path
    config: dict[str, Any]
    frame: Frame

    @property
    def network(self) -> tuple[str, str, int]:
        return (str(self.config.get("arch", "?")), str(self.config.get("dataset", "?")), int(self.config.get("width", 0) or 0))

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed")
        return int(seed) if seed is not None else None


@dataclass
class ReportInputs:
    """Everything a report is drawn from; a kind with no table is None (or an empty list).

    The clones and summary frames carry two columns beside the tables' own: `epoch` (from the activation
    file's name when the table has none) and `r2_threshold` (the `--r2-threshold` in the table's
    options, NaN when it records none), so rows pooled from several tables keep what they were made with.
    """

    files: list[InputFile] = field(default_factory=list)
    clones: Frame | None = None
    summary: Frame | None = None
    ensemble: Frame | None = None
    histories: list[HistoryRun] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)

    def missing_kinds(self) -> list[str]:
        present = {f.kind for f in self.files}
        return [kind for kind in REQUIRED_COLUMNS if kind not in present]


def epoch_of_source(source: object) -> float:
    """The epoch named in an activation file's path (…epoch-0010…), or NaN when it names none."""
    if not isinstance(source, str):
        return float("nan")
    matches = _EPOCH_IN_NAME.findall(Path(source).name) or _EPOCH_IN_NAME.findall(source)
    return float(matches[-1]) if matches else float("nan")


def _with_epoch(frame: Frame) -> Frame:
    if frame.has("epoch"):
        return frame
    epochs = np.array([epoch_of_source(s) for s in frame["source"]], dtype=np.float64)
    return Frame({**frame.columns, "epoch": epochs})


def _with_r2_threshold(frame: Frame, meta: dict[str, Any]) -> Frame:
    if frame.has("r2_threshold"):
        return frame
    threshold = (meta.get("options") or {}).get("r2_threshold")
    value = float(threshold) if isinstance(threshold, (int, float)) else float("nan")
    return Frame({**frame.columns, "r2_threshold": np.full(len(frame), value)})


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given; a directory stands for every *.parquet below it (sorted)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.parquet") if p.is_file())
            if not found:
                raise InputError(f"{path}: directory holds no .parquet tables")
            out.extend(found)
        else:
            out.append(path)
    seen: set[str] = set()
    unique = []
    for path in out:  # the same file named twice (a glob and a directory) counts once
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _check_no_infinity(path: Path, table: pa.Table, columns: tuple[str, ...]) -> None:
    """Refuse +-Inf in the measured values of a clones table: `clones` never writes it (NaN, for a value that does
    not apply, it does)."""
    for name in columns:
        floating = name in table.column_names and pa.types.is_floating(table.schema.field(name).type)
        if floating and np.isinf(table[name].to_numpy(zero_copy_only=False).astype(np.float64)).any():
            raise InputError(f"{path}: column {name!r} holds infinite values")


def _check_pairs(stamps: dict[Path, Any]) -> None:
    """Refuse clones.parquet and clones-summary.parquet side by side that are not from one `clones` run (a pair
    left mixed, e.g. by copying one table over): their stamps (inputs and options) must agree."""
    for path, stamp in stamps.items():
        if path.name != "clones.parquet":
            continue
        sibling = path.with_name("clones-summary.parquet")
        other = next((s for p, s in stamps.items() if p != path and os.path.realpath(p) == os.path.realpath(sibling)), None)
        if other is not None and other != stamp:
            raise InputError(f"{path} and {sibling} are not from one clones run (other inputs or options)",
                             hint="rerun `mitosis clones` for that folder")


def load_inputs(paths: list[Path]) -> ReportInputs:
    """Read every table, check its kind, columns and that it has rows, and group the tables by kind."""
    inputs = ReportInputs()
    by_kind: dict[str, list[Frame]] = {"clones": [], "clones-summary": [], "ensemble": []}
    clone_stamps: dict[Path, Any] = {}
    for path in expand_paths(paths):
        table, meta = read_table(path)
        kind = str(meta.get("kind"))
        if kind not in REQUIRED_COLUMNS:
            inputs.ignored.append((path, kind))
            continue
        missing = [c for c in REQUIRED_COLUMNS[kind] if c not in table.column_names]
        if missing:
            raise InputError(f"{path}: the {kind} table lacks column(s) {', '.join(missing)}")
        if table.num_rows == 0:
            raise InputError(f"{path}: the {kind} table is empty (no rows)")
        check_column_types(path, table, SCHEMAS[kind])
        _check_no_infinity(path, table, FINITE_COLUMNS.get(kind, ()))
        if kind in ("clones", "clones-summary"):
            clone_stamps[path] = table_stamp(meta, "clones")
        inputs.files.append(InputFile(path, kind, file_sha256(path), table.num_rows))
        frame = Frame.from_arrow(table)
        if kind == "history":
            config = (meta.get("options") or {}).get("config") or {}
            if not isinstance(config, dict):
                raise InputError(f"{path}: the history's training config (options.config) is not an object")
            bad = [key for key in ("width", "seed")
                   if not (config.get(key) is None or (isinstance(config[key], int) and not isinstance(config[key], bool)))]
            if bad:
                raise InputError(f"{path}: the history's training config has a {bad[0]!r} that is not an integer")
            inputs.histories.append(HistoryRun(path, dict(config), frame))
        elif kind == "ensemble":
            by_kind[kind].append(frame)
        else:
            by_kind[kind].append(_with_r2_threshold(frame, meta))
    _check_pairs(clone_stamps)
    if by_kind["clones"]:
        inputs.clones = _with_epoch(Frame.concat(by_kind["clones"]))
    if by_kind["clones-summary"]:
        inputs.summary = _with_epoch(Frame.concat(by_kind["clones-summary"]))
    if by_kind["ensemble"]:
        inputs.ensemble = Frame.concat(by_kind["ensemble"])
    if not inputs.files:
        kinds = ", ".join(sorted({k for _, k in inputs.ignored})) or "none"
        raise InputError("nothing to report: no clones, clones-summary, ensemble or history table among the inputs "
                         f"(kinds found: {kinds})")
    return inputs
