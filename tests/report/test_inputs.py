"""Reading the report's tables: kinds sorted, bad files refused with one line naming them, epochs found."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mitosis_cli.errors import InputError
from mitosis_cli.io.tables import provenance, write_table
from mitosis_cli.report.frame import Frame, curve_from_summaries, curve_from_values
from mitosis_cli.report.inputs import epoch_of_source, load_inputs
from tests.report import tables as T


def test_tables_are_sorted_by_kind(tmp_path: Path) -> None:
    paths = T.write_all(tmp_path, widths=(32,), seeds=(0,))
    inputs = load_inputs([tmp_path])  # a folder stands for the tables below it
    assert sorted(f.kind for f in inputs.files) == ["clones", "clones-summary", "ensemble", "history", "history"]
    assert len(inputs.clones) == len(pq.read_table(paths["clones"]))
    assert {run.network for run in inputs.histories} == {("mlp", "mnist5k", 64), ("mlp", "mnist5k", 256)}
    assert inputs.missing_kinds() == []


def test_unknown_kinds_are_ignored_not_fatal(tmp_path: Path) -> None:
    other = write_table(tmp_path / "other.parquet", pa.table({"x": [1]}), provenance("something-new", [], {}, ""))
    history = T.write_history(tmp_path / "history.parquet", 64, 0, epochs=3)
    inputs = load_inputs([other, history])
    assert inputs.ignored == [(other, "something-new")]
    assert inputs.missing_kinds() == ["clones", "clones-summary", "ensemble"]
    with pytest.raises(InputError, match="nothing to report"):
        load_inputs([other])


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("epoch,loss\n1,0.5\n"), "not a readable Parquet file"),
    (lambda p: pq.write_table(pa.table({"x": [1, 2]}), p), "not a mitosis table"),
    (lambda p: write_table(p, pa.Table.from_pylist([], schema=T.ENSEMBLE_SCHEMA), provenance("ensemble", [], {}, "")), "empty"),
    (lambda p: write_table(p, pa.table({"epoch": [1]}), provenance("history", [], {}, "")), "lacks column(s) train_loss"),
])
def test_bad_tables_are_refused_naming_the_file(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "bad.parquet"
    make(path)
    with pytest.raises(InputError) as err:
        load_inputs([path])
    assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_epoch_is_read_from_activation_file_names() -> None:
    assert epoch_of_source("runs/w512/acts-epoch-0010.h5") == 10
    assert epoch_of_source("runs/epoch_7/acts.h5") == 7
    assert np.isnan(epoch_of_source("runs/w512-s1/acts.h5"))
    assert np.isnan(epoch_of_source(None))


def test_frame_concat_where_and_groups() -> None:
    a = Frame({"x": np.array([1.0, 2.0]), "s": np.array(["a", None], dtype=object)})
    b = Frame({"x": np.array([3.0]), "y": np.array([9.0])})
    both = Frame.concat([a, b])
    assert len(both) == 3 and np.isnan(both["y"][:2]).all() and both["s"][2] is None
    assert both.where(s=None)["x"].tolist() == [2.0, 3.0]
    assert [k for k, _ in both.groups(["s"])] == [("a",), (None,)]


def test_curves_pool_repeats_and_summaries() -> None:
    curve = curve_from_values([4, 4, 8], [1.0, 3.0, 5.0])
    assert curve.x.tolist() == [4, 8] and curve.mean.tolist() == [2.0, 5.0]
    assert curve.sem[0] == pytest.approx(1.0) and curve.sem[1] == 0.0
    pooled = curve_from_summaries([4, 4], [1.0, 3.0], [0.1, 0.1], [2, 2])
    assert pooled.mean.tolist() == [2.0] and pooled.sem[0] == pytest.approx(np.sqrt(2 * 4 * 0.01) / 4)
