"""The clones tables: schema, validation, round trip with provenance, and error_inf from an ensemble table."""

from pathlib import Path

import pyarrow as pa
import pytest

from mitosis_cli.errors import InputError
from mitosis_cli.io.clone_tables import (
    CLONES_SCHEMA,
    SUMMARY_SCHEMA,
    clones_table,
    read_clones,
    read_clones_summary,
    summary_table,
    write_clone_tables,
)
from mitosis_cli.io.ensemble_tables import read_error_inf
from mitosis_cli.io.tables import provenance, write_table


def _clone_cols(n: int = 2) -> dict:
    return {"source": ["a.h5"] * n, "arch": ["mlp"] * n, "dataset": ["d"] * n, "width": [64] * n, "seed": [0] * n,
            "epoch": [100] * n, "split": ["test"] * n, "metric": ["reconstruction_r2", "ii_chunk_to_full"][:n],
            "chunk_size": [8] * n, "repeat": list(range(n)), "value": [0.5, float("nan")][:n], "n_points": [None, 100][:n],
            "k": [None, 1][:n]}


def _summary_cols() -> dict:
    return {"source": ["a.h5", "all"], "arch": ["mlp", "mlp"], "dataset": ["d", "d"], "width": [64, None],
            "seed": [0, None], "epoch": [100, None], "split": ["test", "test"], "metric": ["clone_size", "critical_width"],
            "chunk_size": [None, None], "mean": [30.0, 40.0], "std": [None, None], "sem": [None, None], "n": [40, 3],
            "lo": [28.0, None], "hi": [33.0, None], "rule": ["r", "h"],
            "status": ["ok", "undetermined: fewer than three widths above the critical width (2)"]}


def test_round_trip(tmp_path: Path) -> None:
    clones, summary = clones_table(_clone_cols()), summary_table(_summary_cols())
    assert clones.schema.equals(CLONES_SCHEMA) and summary.schema.equals(SUMMARY_SCHEMA)
    write_clone_tables(tmp_path, clones, summary, provenance("clones", [], {"seed": 0}, ""))
    back, meta = read_clones(tmp_path / "clones.parquet")
    assert meta["kind"] == "clones" and meta["options"] == {"seed": 0}
    assert back.drop_columns(["value"]).to_pylist() == clones.drop_columns(["value"]).to_pylist()
    assert back["n_points"].to_pylist() == [None, 100] and back["value"].to_pylist()[0] == 0.5
    s_back, s_meta = read_clones_summary(tmp_path / "clones-summary.parquet")
    assert s_meta["kind"] == "clones-summary" and s_back["width"].to_pylist() == [64, None]
    assert s_back["status"].to_pylist() == _summary_cols()["status"]
    with pytest.raises(InputError, match="expected 'clones'"):
        read_clones(tmp_path / "clones-summary.parquet")


def test_a_summary_from_before_the_status_column_reads_with_a_null_one(tmp_path: Path) -> None:
    old = summary_table(_summary_cols()).drop_columns(["status"])
    write_table(tmp_path / "clones-summary.parquet", old, provenance("clones-summary", [], {}, ""))
    back, _ = read_clones_summary(tmp_path / "clones-summary.parquet")
    assert back.column_names == SUMMARY_SCHEMA.names and back["status"].to_pylist() == [None, None]


def test_validation() -> None:
    cols = _clone_cols()
    cols["metric"] = [None, "x"]
    with pytest.raises(ValueError, match="nulls"):
        clones_table(cols)
    cols = _clone_cols()
    del cols["k"]
    with pytest.raises(ValueError, match="missing column"):
        clones_table(cols)
    cols = _clone_cols()
    cols["value"] = [1.0]
    with pytest.raises(ValueError, match="lengths"):
        clones_table(cols)


def _ensemble(tmp_path: Path, values: list[float]) -> Path:
    n = len(values) + 1
    table = pa.table({"kind": ["error-inf"] * len(values) + ["ensemble"], "metric": ["error"] * n,
                      "split": ["test"] * n, "value": [*values, 0.9], "width": [64] * n})
    return write_table(tmp_path / "ensemble.parquet", table, provenance("ensemble", [], {}, ""))


def test_error_inf_from_ensemble(tmp_path: Path) -> None:
    assert read_error_inf(_ensemble(tmp_path, [0.042])) == pytest.approx(0.042)
    with pytest.raises(InputError, match="no error-inf"):
        read_error_inf(_ensemble(tmp_path, []))
    with pytest.raises(InputError, match="2 different"):
        read_error_inf(_ensemble(tmp_path, [0.04, 0.05]))
