"""The ensemble table: round trip, validation of kinds and metrics, error_inf; and toy member files for other tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import ActivationHeader, write_activations
from mitosis_cli.io.ensemble_tables import COLUMNS, EnsembleRows, read_ensemble_table, read_error_inf, write_ensemble_table
from mitosis_cli.io.tables import input_records, provenance, write_table


def write_member(path: Path, logits: dict[str, np.ndarray], labels: dict[str, np.ndarray], seed: int,
                 width: int | None = None, config: dict[str, Any] | None = None, dataset: str = "toy") -> Path:
    """An activation file whose stored logits are exactly `logits` (N, C) per split.

    With `width` None the layer is the logits themselves (W = C, identity head, zero bias); otherwise random
    features of `width` neurons and a random head, and the stored logits are features @ head^T + bias.
    """
    first = next(iter(logits.values()))
    classes = first.shape[1]
    rng = np.random.default_rng(100 + seed)
    if width is None:
        width, weight, bias = classes, np.eye(classes, dtype=np.float32), np.zeros(classes, np.float32)
        features = {s: z.astype(np.float32) for s, z in logits.items()}
    else:
        weight = rng.standard_normal((classes, width)).astype(np.float32)
        bias = rng.standard_normal(classes).astype(np.float32)
        features = {s: rng.standard_normal((len(z), width)).astype(np.float32) for s, z in logits.items()}
        logits = {s: (f @ weight.T + bias).astype(np.float32) for s, f in features.items()}
    streams = {s: (len(z), iter([(features[s], z.astype(np.float32), labels[s].astype(np.int64))])) for s, z in logits.items()}
    meta = ActivationHeader(width=width, num_classes=classes, dataset=dataset, arch="toy", seed=seed, epoch=1,
                          layer="toy", config=config or {})
    return write_activations(path, meta, weight, bias, streams)


def toy_members(tmp_path: Path, count: int = 3, n: int = 6, classes: int = 3, width: int | None = None,
                splits: tuple[str, ...] = ("train", "test"), prefix: str = "m") -> list[Path]:
    rng = np.random.default_rng(0)
    labels = {s: rng.integers(0, classes, n) for s in splits}
    return [write_member(tmp_path / f"{prefix}{seed}.h5", {s: rng.standard_normal((n, classes)) for s in splits},
                         labels, seed, width)
            for seed in range(count)]


def _rows() -> EnsembleRows:
    rows = EnsembleRows()
    rows.add("ensemble", 64, 2, 0, "test", {"accuracy": 0.75, "error": 0.25, "cross_entropy": 0.5})
    rows.add("error-inf", 512, 4, 0, "test", {"error": 0.125})
    rows.add("bias-variance", 64, 4, 0, "train", {"loss": 1.0, "bias": 0.75, "variance": 0.25})
    return rows


def test_round_trip_with_provenance(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=2)
    meta = provenance("ensemble", input_records(paths), {"repeats": 3}, "mitosis ensemble")
    out = write_ensemble_table(tmp_path / "ensemble.parquet", _rows().to_table(), meta)
    table, got = read_ensemble_table(out)
    assert table.column_names == list(COLUMNS) and table.num_rows == 7
    types = ["string", "int64", "int64", "int64", "string", "string", "double"]
    assert [str(table.schema.field(c).type) for c in COLUMNS] == types
    assert table.slice(3, 1).to_pylist() == [{"kind": "error-inf", "width": 512, "members": 4, "repeat": 0, "split": "test",
                                             "metric": "error", "value": 0.125}]
    assert got["kind"] == "ensemble" and got["options"] == {"repeats": 3} and len(got["inputs"]) == 2
    assert read_error_inf(out) == 0.125
    assert not list(tmp_path.glob(".*.tmp"))


def test_rows_refuse_unknown_kinds_and_metrics() -> None:
    rows = EnsembleRows()
    with pytest.raises(ValueError, match="kind"):
        rows.add("committee", 1, 1, 0, "test", {"error": 0.1})
    with pytest.raises(ValueError, match="metric"):
        rows.add("wide", 1, 1, 0, "test", {"f1": 0.1})


def test_read_refuses_other_tables(tmp_path: Path) -> None:
    other = write_table(tmp_path / "clones.parquet", pa.table({"x": [1]}), provenance("clones", [], {}, ""))
    with pytest.raises(InputError, match="expected 'ensemble'"):
        read_ensemble_table(other)
    bad = pa.table({c: ["x"] if c in ("kind", "split", "metric") else [1] for c in COLUMNS[:-1]} | {"value": [0.5]})
    odd = write_table(tmp_path / "odd.parquet", bad.set_column(0, "kind", pa.array(["committee"])),
                      provenance("ensemble", [], {}, ""))
    with pytest.raises(InputError, match="unknown kind value"):
        read_ensemble_table(odd)


def test_error_inf_missing(tmp_path: Path) -> None:
    rows = EnsembleRows()
    rows.add("wide", 8, 1, 0, "train", {"error": 0.5})
    out = write_ensemble_table(tmp_path / "e.parquet", rows.to_table(), provenance("ensemble", [], {}, ""))
    with pytest.raises(InputError, match="no error-inf value"):
        read_error_inf(out)
