"""Numerical robustness: degenerate layers and extreme scales give finite results that match float64 references.

Layers with constant neurons, duplicated neurons, dead ReLUs (all-zero columns) and rank-deficient
chunks, at scales 1e-6 to 1e6, through the moment-based ridge (R^2, residual correlations), the head
restricted to chunks, and the Information Imbalance; float16 activation files through the readers and
the whole `clones` command. Tolerances (documented in docs/reliability.md):

* R^2 against a float64 SVD least-squares ridge: |difference| <= 1e-6 at every scale (the ridge
  penalty alpha = 1e-8 is absolute, as in the paper and scikit-learn, so at scale 1e-6 it shrinks the
  fit: the reference uses the same alpha, so both sides are the same estimator);
* Information Imbalance: exact (integer ranks) under a power-of-two rescaling of the data;
* float16 files: read back as float32 holding exactly the float16 values; clones results within
  2e-3 of the float32 file's (float16 rounding of the features, ~5e-4 relative).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pyarrow.compute as pc
import pytest

from mitosis_cli.analysis.chunks import draw_chunks
from mitosis_cli.analysis.information_imbalance import (
    chunk_information_imbalances,
    information_imbalance,
)
from mitosis_cli.analysis.reconstruction import (
    MomentAccumulator,
    Moments,
    reconstruction_scores,
)
from mitosis_cli.io.activations import ActivationFile
from mitosis_cli.io.clone_tables import read_clones

from .conftest import RunCli, planted_acts, record
from .test_fuzz import brute_information_imbalance, ridge_r2_reference

SCALES = [1e-6, 1e-3, 1.0, 1e3, 1e6]


def degenerate_layer(n: int = 200, seed: int = 0) -> np.ndarray:
    """Columns: 4 signals, 2 exact duplicates, a constant neuron, 2 dead ReLUs, noisy copies; rank 8 of 16."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, 4))
    cols = [signal[:, 0], signal[:, 1], signal[:, 2], signal[:, 3],
            signal[:, 0].copy(), signal[:, 1].copy(),  # duplicated neurons
            np.full(n, 3.0),  # a constant neuron
            np.zeros(n), np.zeros(n),  # dead ReLUs
            np.maximum(signal[:, 2], 0.0),  # a ReLU of a signal
            signal[:, 0] + signal[:, 1],  # a linear combination: rank deficiency
            *(signal[:, j % 4] + 0.1 * rng.standard_normal(n) for j in range(5))]
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("scale", SCALES)
def test_ridge_on_degenerate_layers_is_finite_and_matches_float64(scale: float) -> None:
    x = degenerate_layer() * scale
    width = x.shape[1]
    chunks = [np.array([0, 4]), np.array([7, 8]), np.array([6]), np.array([0, 1, 10]), np.arange(width),
              *draw_chunks(width, 4, 4, seed=1), *draw_chunks(width, 8, 4, seed=2)]
    # moments streamed in uneven float32 blocks, as `clones` reads an HDF5 file
    acc = MomentAccumulator(width)
    x32 = x.astype(np.float32)
    for start, stop in ((0, 7), (7, 100), (100, 200)):
        acc.update(x32[start:stop])
    scores = reconstruction_scores(acc.result(), chunks)
    assert np.isfinite(scores.r2).all() and (scores.r2 <= 1 + 1e-9).all()
    finite_corr = scores.residual_abs_corr[~np.isnan(scores.residual_abs_corr)]
    assert ((finite_corr >= 0) & (finite_corr <= 1 + 1e-9)).all()
    # The moments route solves normal equations, which square the condition number: when alpha = 1e-8 no
    # longer regularises (scale >= 1e3) a chunk whose neurons are collinear up to float32 rounding
    # ([0, 1, 10]: x10 = x0 + x1) loses digits. Measured worst case 1e-4; 1e-6 everywhere else.
    tolerance = 1e-6 if scale <= 1 else 2e-4
    for r2, chunk in zip(scores.r2, chunks, strict=True):
        assert r2 == pytest.approx(ridge_r2_reference(x32.astype(np.float64), chunk, 1e-8), abs=tolerance), (scale, chunk)
    if scale >= 1e-3:  # at 1e-6 the absolute alpha shrinks even the full layer's fit (the reference agrees)
        assert scores.r2[4] == pytest.approx(1.0, abs=1e-6)  # the whole layer
    if scale >= 1e-3:  # alpha = 1e-8 negligible: a chunk holding the 4 signals explains the signal columns
        assert scores.r2[0] < scores.r2[3]
    record("numerics.ridge_cases", len(chunks))


def test_dead_and_constant_neurons_alone_explain_nothing() -> None:
    x = degenerate_layer()
    scores = reconstruction_scores(Moments.of(x), [np.array([7, 8]), np.array([6])])
    assert scores.r2 == pytest.approx([0.0, 0.0], abs=1e-9)
    record("numerics.ridge_cases", 2)


@pytest.mark.parametrize("scale_exp", [-20, -10, 0, 10, 20])
def test_information_imbalance_is_scale_free_and_keeps_the_tie_rule(scale_exp: int) -> None:
    """Powers of two from ~1e-6 to ~1e6: the same exact ranks, equal to the definition with its tie rule."""
    rng = np.random.default_rng(4)
    base = np.round(rng.standard_normal((30, 6)) * 2)
    base[5] = base[3]  # duplicated points: distance 0, ties everywhere around them
    base[17] = base[3]
    base[:, 4] = 0.0  # a dead neuron
    x = base * 2.0**scale_exp
    chunks = [np.array([0, 1]), np.array([4]), np.array([2, 3, 5]), np.arange(6)]
    got = chunk_information_imbalances(x, chunks, k=2)
    want = np.array([[brute_information_imbalance(x[:, c], x, 2), brute_information_imbalance(x, x[:, c], 2)] for c in chunks])
    np.testing.assert_array_equal(got, want)
    # and the value does not depend on the scale at all
    np.testing.assert_array_equal(got, chunk_information_imbalances(base, chunks, k=2))
    # a dead neuron's chunk: every point ties with every other, so every rank is 1 and Delta(chunk -> full) uses
    # the lowest-index neighbours; Delta(full -> chunk) is the minimum 2/N (all tied at rank 1)
    assert got[1, 1] == pytest.approx(2 / 30)
    assert information_imbalance(x, x, 1) == pytest.approx(2 / 30)
    record("numerics.ii_cases", len(chunks) + 1)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_other_float_types_are_read_as_float32(tmp_path: Path, dtype: str) -> None:
    ref = planted_acts(tmp_path / "f32.h5", n=64, width=8, clone_size=2)
    other = planted_acts(tmp_path / f"{dtype}.h5", n=64, width=8, clone_size=2, dtype=dtype)
    with h5py.File(other) as f:
        assert f["test/features"].dtype == np.dtype(dtype)
        stored = f["test/features"][...]
    arrays = ActivationFile(other).split("test")
    weight, _ = ActivationFile(other).head()
    assert arrays.features.dtype == np.float32 and arrays.logits.dtype == np.float32 and weight.dtype == np.float32
    np.testing.assert_array_equal(arrays.features, stored.astype(np.float32))
    np.testing.assert_allclose(arrays.features, ActivationFile(ref).features("test"), rtol=1e-3, atol=1e-3)
    record("numerics.dtype_cases")


def test_float16_file_gives_the_float32_clones_results(tmp_path: Path, cli: RunCli) -> None:
    args = ["--repeats", "4", "--acc-repeats", "4", "--ii-points", "0", "--device", "cpu", "--threads", "1", "--quiet"]
    f32 = planted_acts(tmp_path / "f32.h5", n=300, width=16, clone_size=4, noise=0.1)
    f16 = planted_acts(tmp_path / "f16.h5", n=300, width=16, clone_size=4, noise=0.1, dtype="float16")
    assert cli("clones", f32, *args, "-o", tmp_path / "a").code == 0
    assert cli("clones", f16, *args, "-o", tmp_path / "b").code == 0
    a, b = read_clones(tmp_path / "a" / "clones.parquet")[0], read_clones(tmp_path / "b" / "clones.parquet")[0]
    for metric in ("reconstruction_r2", "residual_abs_corr", "chunk_accuracy", "probe_accuracy"):
        va = a.filter(pc.equal(a["metric"], metric))["value"].to_numpy()
        vb = b.filter(pc.equal(b["metric"], metric))["value"].to_numpy()
        assert len(va) == len(vb) > 0 and np.isfinite(vb).all()
        # accuracies move by whole samples (1/300) only where float16 rounding flips a near-tie
        tol = 2e-3 if "r2" in metric or "corr" in metric else 2 / 300
        np.testing.assert_allclose(vb, va, atol=tol, err_msg=metric)
    record("numerics.dtype_cases")


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_clones_command_at_extreme_scales_is_finite(tmp_path: Path, cli: RunCli, scale: float) -> None:
    """A whole `clones` run on activations scaled by 1e-6 / 1e6 (head scaled inversely): finite, R^2 <= 1."""
    path = planted_acts(tmp_path / "a.h5", n=120, width=16, clone_size=4)
    with h5py.File(path, "r+") as f:
        for split in ("train", "test"):
            f[f"{split}/features"][...] = f[f"{split}/features"][...] * scale
        f["head/weight"][...] = f["head/weight"][...] / scale
    assert cli("clones", path, "--repeats", "3", "--acc-repeats", "3", "--ii-points", "60", "--device", "cpu",
               "--threads", "1", "--quiet", "-o", tmp_path / "out").code == 0
    table = read_clones(tmp_path / "out" / "clones.parquet")[0]
    values = table["value"].to_numpy()
    assert np.isfinite(values).all()
    r2 = table.filter(pc.equal(table["metric"], "reconstruction_r2"))["value"].to_numpy()
    assert (r2 <= 1 + 1e-9).all()
    record("numerics.scale_runs")
