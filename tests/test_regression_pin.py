"""Values pinned from a small planted fixture before the stages/ refactor: same inputs, same tables.

The numbers below were written by `mitosis clones` and `mitosis ensemble` (version 0.1.0, commit 5771a7a)
on the fixture built here. Any change of chunk draws, estimators, splits or neurons moves at least one.
"""

from pathlib import Path

import pytest

from mitosis_cli.cli.app import main
from mitosis_cli.io.clone_tables import read_clones, read_clones_summary
from mitosis_cli.io.ensemble_tables import read_ensemble_table
from tests.conftest import write_planted_acts

# (width, split, metric, chunk size, repeat) -> value in clones.parquet
CLONES = {
    (32, "test", "chunk_accuracy", 4, 6): 0.6666666666666666,
    (32, "train", "chunk_error_rescaled", 8, 2): 0.30000000000000004,
    (32, "test", "reconstruction_r2", 4, 3): 0.4738127992940494,
    (32, "train->test", "reconstruction_r2", 8, 1): 0.9879766474723762,
    (32, "test", "residual_abs_corr", 4, 0): 0.17968572038900163,
    (32, "test", "residual_frob_corr", 2, 4): 0.44050780905858355,
    (32, "train->test", "probe_accuracy", 4, 5): 0.6291666666666667,
    (32, "test", "ii_chunk_to_full", 8, 2): 0.2728,
    (32, "test", "ii_full_to_chunk", 2, 1): 0.136,
    (32, "test", "residual_abs_skew", 4, 1): 0.14886646695596936,
    (16, "train", "chunk_error_rescaled", 8, 2): 0.12916666666666665,
    (16, "test", "reconstruction_r2", 4, 3): 0.7479803237735176,
    (16, "train->test", "reconstruction_r2", 8, 1): 0.6938913819437276,
    (16, "test", "residual_abs_corr", 4, 0): 0.20603676331606413,
    (16, "test", "residual_frob_corr", 2, 4): 0.3876950972091919,
    (16, "test", "ii_chunk_to_full", 8, 2): 0.033800000000000004,
    (16, "test", "ii_full_to_chunk", 2, 1): 0.18100000000000002,
    (16, "test", "residual_abs_skew", 4, 1): 0.1272781162058575,
}
# (width or None, metric) -> (mean, lo, hi) in clones-summary.parquet
SUMMARY = {
    (32, "clone_size"): (15.558097860814444, 14.977601936679356, 15.720219862559984),
    (16, "clone_size"): (15.030555788162411, 13.85797292909294, 15.373628055920737),
    (32, "n_clones"): (2.0568067051819434, 2.0355949394965336, 2.136523599391014),
    (16, "n_clones"): (1.0644982278433837, 1.0407432742486595, 1.1545700140898791),
    (32, "excess_error_c"): (0.021352813944837224, None, None),
    (16, "excess_error_c"): (-0.08333333333333331, None, None),
    (None, "critical_width"): (14.9609375, None, None),
    (None, "clones_per_width_slope"): (0.062022773744208975, None, None),
}
# (kind, width, members, repeat, split, metric) -> value in ensemble.parquet
ENSEMBLE = {
    ("ensemble", 16, 2, 0, "test", "accuracy"): 0.9875,
    ("wide", 32, 1, 0, "test", "cross_entropy"): 0.30797594357757074,
    ("chunk-average", 8, 2, 1, "test", "error"): 0.0708333333333333,
    ("chunk-average", 4, 8, 0, "train", "accuracy"): 0.9708333333333333,
    ("error-inf", 32, 1, 0, "test", "error"): 0.012499999999999956,
    ("bias-variance", 16, 2, 0, "test", "variance"): 0.0011871600153869149,
    ("same-total-width", 16, 2, 0, "train", "accuracy"): 0.9791666666666666,
}


def _one(rows: list[dict], **where: object) -> dict:
    found = [r for r in rows if all(r[k] == v for k, v in where.items())]
    assert len(found) == 1, where
    return found[0]


def _planted(d: Path) -> tuple[Path, Path, Path]:
    return (write_planted_acts(d / "a.h5", n=240, width=32, clone_size=4, noise=0.1, classes=3, seed=0),
            write_planted_acts(d / "b.h5", n=240, width=16, clone_size=4, noise=0.1, classes=3, seed=0),
            write_planted_acts(d / "c.h5", n=240, width=16, clone_size=4, noise=0.1, classes=3, seed=1))


# Each test runs its own command (function-scoped fixtures): a module-scoped run would be credited by
# mutation testing to the first test only, and the others would never judge a mutant (docs/testing.md).
@pytest.fixture
def clone_tables(tmp_path: Path) -> tuple[list[dict], list[dict]]:
    a, b, _ = _planted(tmp_path)
    assert main(["clones", str(a), str(b), "--repeats", "5", "--acc-repeats", "7", "--ii-points", "100", "--seed", "3",
                 "--error-inf", "0.05", "--rescale", "-o", str(tmp_path / "clones"), "-q", "--device", "cpu"]) == 0
    return (read_clones(tmp_path / "clones/clones.parquet")[0].to_pylist(),
            read_clones_summary(tmp_path / "clones/clones-summary.parquet")[0].to_pylist())


@pytest.fixture
def ensemble_rows(tmp_path: Path) -> list[dict]:
    a, b, c = _planted(tmp_path)
    assert main(["ensemble", str(a), str(b), str(c), "--repeats", "3", "-o", str(tmp_path / "ens.parquet"), "-q"]) == 0
    return read_ensemble_table(tmp_path / "ens.parquet")[0].to_pylist()


def test_clones_values_are_unchanged(clone_tables) -> None:
    clones = clone_tables[0]
    for (width, split, metric, size, repeat), value in CLONES.items():
        row = _one(clones, width=width, split=split, metric=metric, chunk_size=size, repeat=repeat)
        assert row["value"] == pytest.approx(value, rel=1e-9, abs=1e-12), (width, split, metric, size, repeat)


def test_summary_values_are_unchanged(clone_tables) -> None:
    summary = clone_tables[1]
    for (width, metric), (mean, lo, hi) in SUMMARY.items():
        row = _one(summary, width=width, metric=metric)
        for got, want in ((row["mean"], mean), (row["lo"], lo), (row["hi"], hi)):
            assert (got is None) == (want is None) and (want is None or got == pytest.approx(want, rel=1e-9)), (width, metric)


def test_ensemble_values_are_unchanged(ensemble_rows) -> None:
    ensemble = ensemble_rows
    for (kind, width, members, repeat, split, metric), value in ENSEMBLE.items():
        row = _one(ensemble, kind=kind, width=width, members=members, repeat=repeat, split=split, metric=metric)
        assert row["value"] == pytest.approx(value, rel=1e-9, abs=1e-12), (kind, width, members, split, metric)
