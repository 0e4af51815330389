"""The ensemble table and its member files: round trip, validation, and members that did not see the same samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pytest

from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import ActivationMeta, write_activations
from mitosis_cli.io.ensemble_tables import (
    COLUMNS,
    EnsembleRows,
    load_members,
    matches_request,
    read_ensemble_table,
    read_error_inf,
    write_ensemble_table,
)
from mitosis_cli.io.tables import provenance, write_table


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
    meta = ActivationMeta(width=width, num_classes=classes, dataset=dataset, arch="toy", seed=seed, epoch=1,
                          layer="toy", config=config or {})
    return write_activations(path, meta, weight, bias, streams)


def toy_members(tmp_path: Path, count: int = 3, n: int = 6, classes: int = 3, width: int | None = None,
                splits: tuple[str, ...] = ("train", "test"), prefix: str = "m") -> list[Path]:
    rng = np.random.default_rng(0)
    labels = {s: rng.integers(0, classes, n) for s in splits}
    return [write_member(tmp_path / f"{prefix}{seed}.h5", {s: rng.standard_normal((n, classes)) for s in splits},
                         labels, seed, width)
            for seed in range(count)]


def test_load_members_stacks_logits_in_order(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=3, width=8)
    found = load_members(paths)
    assert found.splits == ("train", "test") and found.logits["test"].shape == (3, 6, 3)
    assert found.pools() == {8: [0, 1, 2]}
    with h5py.File(paths[1]) as h5:
        np.testing.assert_array_equal(found.logits["train"][1], h5["train/logits"][...])
        np.testing.assert_array_equal(found.labels["test"], h5["test/labels"][...])


def test_pools_group_by_width_and_sort_by_seed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = {"test": rng.integers(0, 3, 4)}
    paths = [write_member(tmp_path / f"{w}-{s}.h5", {"test": rng.standard_normal((4, 3))}, labels, s, width=w)
             for w, s in [(8, 5), (4, 2), (8, 1), (4, 0)]]
    found = load_members(paths)
    assert found.pools() == {4: [3, 1], 8: [2, 0]}


def _relabel(path: Path) -> None:
    with h5py.File(path, "r+") as h5:
        h5["test/labels"][0] = (h5["test/labels"][0] + 1) % 3


def _reorder(path: Path) -> None:
    with h5py.File(path, "r+") as h5:
        for key in ("features", "logits", "labels"):
            h5[f"test/{key}"][...] = h5[f"test/{key}"][...][::-1]


@pytest.mark.parametrize("spoil, message", [
    (_relabel, "test labels differ from"),
    (_reorder, "same samples in the same order"),
])
def test_members_must_share_samples(tmp_path: Path, spoil, message: str) -> None:
    paths = toy_members(tmp_path)
    spoil(paths[2])
    with pytest.raises(InputError, match=message) as err:
        load_members(paths)
    assert str(paths[2]) in str(err.value) and "\n" not in str(err.value)


def test_different_splits_are_refused(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=2) + toy_members(tmp_path, count=3, splits=("test",), prefix="t")[2:]
    with pytest.raises(InputError, match="set of splits"):
        load_members(paths)


def test_different_sample_counts_are_refused(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=2) + toy_members(tmp_path, count=3, n=7, prefix="n")[2:]
    with pytest.raises(InputError, match="number of train samples"):
        load_members(paths)


def test_one_member_and_duplicates_are_refused(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=2)
    with pytest.raises(InputError, match="at least 2"):
        load_members(paths[:1])
    with pytest.raises(InputError, match="already given"):
        load_members([paths[0], paths[1], paths[0]])


def test_noise_input_controls_are_refused(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=2)
    with h5py.File(paths[1], "r+") as h5:
        h5.attrs["inputs"] = "gaussian-noise"
    with pytest.raises(InputError, match="gaussian-noise"):
        load_members(paths)


def _rows() -> EnsembleRows:
    rows = EnsembleRows()
    rows.add("ensemble", 64, 2, 0, "test", {"accuracy": 0.75, "error": 0.25, "cross_entropy": 0.5})
    rows.add("error-inf", 512, 4, 0, "test", {"error": 0.125})
    rows.add("bias-variance", 64, 4, 0, "train", {"loss": 1.0, "bias": 0.75, "variance": 0.25})
    return rows


def test_round_trip_with_provenance(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=2)
    meta = provenance("ensemble", paths, {"repeats": 3})
    out = write_ensemble_table(tmp_path / "ensemble.parquet", _rows(), meta)
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
    other = write_table(tmp_path / "clones.parquet", pa.table({"x": [1]}), provenance("clones", []))
    with pytest.raises(InputError, match="expected 'ensemble'"):
        read_ensemble_table(other)
    bad = pa.table({c: ["x"] if c in ("kind", "split", "metric") else [1] for c in COLUMNS[:-1]} | {"value": [0.5]})
    odd = write_table(tmp_path / "odd.parquet", bad.set_column(0, "kind", pa.array(["committee"])), provenance("ensemble", []))
    with pytest.raises(InputError, match="unknown kind value"):
        read_ensemble_table(odd)


def test_error_inf_missing(tmp_path: Path) -> None:
    rows = EnsembleRows()
    rows.add("wide", 8, 1, 0, "train", {"error": 0.5})
    out = write_ensemble_table(tmp_path / "e.parquet", rows, provenance("ensemble", []))
    with pytest.raises(InputError, match="no error-inf value"):
        read_error_inf(out)


def test_matches_request(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=3)
    target = tmp_path / "ensemble.parquet"
    meta = provenance("ensemble", paths, {"repeats": 3, "sizes": None})
    assert not matches_request(target, meta)
    write_ensemble_table(target, _rows(), meta)
    assert matches_request(target, provenance("ensemble", paths[::-1], {"sizes": None, "repeats": 3}))
    assert not matches_request(target, provenance("ensemble", paths, {"repeats": 4, "sizes": None}))
    assert not matches_request(target, provenance("ensemble", paths[:2], {"repeats": 3, "sizes": None}))
    target.write_text("not parquet")
    with pytest.raises(InputError, match="refusing to overwrite"):
        matches_request(target, meta)
