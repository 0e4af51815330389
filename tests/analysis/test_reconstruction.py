"""Reconstruction R^2 and residual correlations from moments, against scikit-learn on the same chunks."""

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from mitosis_cli.analysis.reconstruction import (
    MomentAccumulator,
    Moments,
    ResidualShape,
    reconstruction_scores,
    ridge_from_moments,
)


def _layer(rng: np.random.Generator, n: int, width: int, latent: int = 5, shift: float = 1.5) -> np.ndarray:
    basis = rng.standard_normal((latent, width))
    x = rng.standard_normal((n, latent)) @ basis + 0.3 * rng.standard_normal((n, width)) + shift
    return x.astype(np.float32)


def _sklearn_scores(x_fit: np.ndarray, x_score: np.ndarray, chunk: np.ndarray) -> tuple[float, float, float]:
    """R^2 (variance weighted), mean |off-diag corr| and RMS off-diag corr of residuals outside the chunk."""
    xf, xs = x_fit.astype(np.float64), x_score.astype(np.float64)
    model = Ridge(alpha=1e-8).fit(xf[:, chunk], xf)
    pred = model.predict(xs[:, chunk])
    r2 = r2_score(xs, pred, multioutput="variance_weighted")
    rest = np.setdiff1d(np.arange(xs.shape[1]), chunk)
    corr = np.corrcoef((xs - pred)[:, rest], rowvar=False)
    off = corr[~np.eye(len(rest), dtype=bool)]
    return r2, np.abs(off).mean(), np.sqrt((off**2).mean())


def _paper_mean_corr(x: np.ndarray, chunk: np.ndarray) -> float:
    """The paper's `mean_corr` (their analysis_repr.py), recomputed from scratch in float64."""
    xd = x.astype(np.float64)
    res = xd - Ridge(alpha=1e-8).fit(xd[:, chunk], xd).predict(xd[:, chunk])
    cov = np.cov(res.T)
    norm = np.sqrt(np.outer(np.diag(cov), np.diag(cov))) + 1e-8
    return float(np.mean(np.abs((cov / norm)[np.tril_indices_from(cov, k=-1)])))


def _previous_scores(moments: Moments, chunk: np.ndarray, fit: Moments | None) -> tuple[float, float | None]:
    """R^2 in and out of sample as the implementation before the per-chunk engine computed them (the reference)."""
    alpha, total = 1e-8, float(torch.trace(moments.scatter))
    ridge = ridge_from_moments(moments, chunk, alpha)
    r2 = 1 - (total - float(ridge.z.square().sum()) - alpha * float(ridge.coef.square().sum())) / total
    if fit is None:
        return r2, None
    idx = torch.as_tensor(chunk)
    coef = ridge_from_moments(fit, chunk, alpha).coef
    delta = moments.mean - fit.mean
    cross = moments.scatter.index_select(0, idx)
    gram = cross.index_select(1, idx)
    b_delta = coef.T @ delta.index_select(0, idx)
    rss = (float(torch.trace(moments.scatter)) + moments.n * float(delta @ delta)
           - 2 * (float((coef * cross).sum()) + moments.n * float(b_delta @ delta))
           + float((coef * (gram @ coef)).sum()) + moments.n * float(b_delta @ b_delta))
    return r2, 1 - rss / total


@pytest.mark.parametrize("noise", [0.3, 1e-4])  # a noisy layer and a near-collapsed one (ill-conditioned chunks)
def test_r2_equals_the_previous_implementation_on_the_same_chunks(noise: float) -> None:
    rng = np.random.default_rng(11)
    basis = rng.standard_normal((6, 64))
    layers = [rng.standard_normal((400, 6)) @ basis + noise * rng.standard_normal((400, 64)) for _ in range(2)]
    train, test = Moments.of(layers[0]), Moments.of(layers[1])
    for size in (1, 4, 16, 40):  # both the all-neuron path (s <= W / 4) and the complement path
        chunks = np.stack([np.sort(rng.choice(64, size, replace=False)) for _ in range(3)])
        scores = reconstruction_scores(test, chunks, fit=train)
        for i, chunk in enumerate(chunks):
            r2, r2_oos = _previous_scores(test, chunk, train)
            assert scores.r2[i] == pytest.approx(r2, abs=1e-10)
            assert scores.r2_out_of_sample[i] == pytest.approx(r2_oos, abs=1e-10)


@pytest.mark.parametrize("scale", [1.0, 3e-4])  # 3e-4: residual variances near the paper's 1e-8, not a series any more
def test_paper_residual_correlation_is_the_papers_formula(scale: float) -> None:
    rng = np.random.default_rng(12)
    x = _layer(rng, 400, 32).astype(np.float64) * scale
    chunks = [np.array([5]), np.sort(rng.choice(32, 4, replace=False)), np.sort(rng.choice(32, 20, replace=False))]
    scores = reconstruction_scores(Moments.of(x), chunks)
    for i, chunk in enumerate(chunks):
        assert scores.residual_abs_corr_paper[i] == pytest.approx(_paper_mean_corr(x, chunk), abs=1e-9)
        m, w = 32 - len(chunk), 32
        if scale == 1.0:  # the regulariser is negligible: ours on m neurons, diluted to all W (W - 1) pairs
            assert scores.residual_abs_corr_paper[i] == pytest.approx(
                scores.residual_abs_corr[i] * m * (m - 1) / (w * (w - 1)), rel=1e-6)


def test_streamed_moments_match_numpy() -> None:
    x = _layer(np.random.default_rng(0), 257, 9, shift=100.0)  # a large mean: the merge must stay exact
    acc = MomentAccumulator(9)
    for start in range(0, 257, 40):
        acc.update(x[start : start + 40])
    m = acc.result()
    xd = x.astype(np.float64)
    np.testing.assert_allclose(m.mean.numpy(), xd.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.scatter.numpy(), np.cov(xd, rowvar=False, bias=True) * 257, rtol=1e-9, atol=1e-9)
    assert m.n == 257


def test_in_sample_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    x = _layer(rng, 300, 24)
    chunks = [np.array([0, 3, 5]), np.array([7]), np.sort(rng.choice(24, 12, replace=False)), np.arange(22)]
    scores = reconstruction_scores(Moments.of(x), chunks)
    for i, chunk in enumerate(chunks):
        r2, abs_corr, frob = _sklearn_scores(x, x, chunk)
        assert scores.r2[i] == pytest.approx(r2, abs=1e-10)
        assert scores.residual_abs_corr[i] == pytest.approx(abs_corr, abs=1e-8)
        assert scores.residual_frob_corr[i] == pytest.approx(frob, abs=1e-8)
    assert scores.r2_out_of_sample is None


def test_out_of_sample_matches_sklearn() -> None:
    rng = np.random.default_rng(2)
    x_train, x_test = _layer(rng, 250, 16), _layer(rng, 180, 16, shift=1.0)
    chunks = np.stack([np.sort(rng.choice(16, 5, replace=False)) for _ in range(4)])
    scores = reconstruction_scores(Moments.of(x_test), chunks, fit=Moments.of(x_train))
    for i, chunk in enumerate(chunks):
        assert scores.r2_out_of_sample[i] == pytest.approx(_sklearn_scores(x_train, x_test, chunk)[0], abs=1e-10)
        assert scores.r2[i] == pytest.approx(_sklearn_scores(x_test, x_test, chunk)[0], abs=1e-10)


def test_whole_layer_and_duplicates() -> None:
    x = _layer(np.random.default_rng(3), 100, 8)
    chunks = np.stack([np.arange(8), np.arange(8)[::-1], np.arange(8)])
    scores = reconstruction_scores(Moments.of(x), chunks)
    np.testing.assert_allclose(scores.r2, 1.0, atol=1e-9)
    assert np.isnan(scores.residual_abs_corr).all()  # no neuron outside the chunk


def test_dead_and_copied_neurons_do_not_break_it() -> None:
    rng = np.random.default_rng(4)
    x = _layer(rng, 120, 10)
    x[:, 2] = 0.0  # a dead ReLU unit
    x[:, 7] = x[:, 1]  # an exact copy
    scores = reconstruction_scores(Moments.of(x), [np.array([1, 2, 4]), np.array([0, 3])])
    assert np.isfinite(scores.r2).all() and np.isfinite(scores.residual_abs_corr).all()
    with np.errstate(invalid="ignore"):  # the reference's correlations divide by the dead unit's zero spread
        r2, _, _ = _sklearn_scores(x, x, np.array([0, 3]))
    assert scores.r2[1] == pytest.approx(r2, abs=1e-10)


def test_ridge_coefficients_match_sklearn() -> None:
    x = _layer(np.random.default_rng(5), 90, 7).astype(np.float64)
    chunk = np.array([1, 4])
    ridge = ridge_from_moments(Moments.of(x), chunk, alpha=0.5)
    ref = Ridge(alpha=0.5).fit(x[:, chunk], x)
    np.testing.assert_allclose(ridge.coef.numpy(), ref.coef_.T, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(ridge.intercept.numpy(), ref.intercept_, rtol=1e-9, atol=1e-10)


def test_residual_shape_matches_scipy_and_detects_shared_amplitude() -> None:
    rng = np.random.default_rng(6)
    n = 4000
    signal = rng.standard_normal((n, 2))
    amplitude = np.exp(rng.standard_normal((n, 1)))  # one noise amplitude shared by all neurons
    copies = signal[:, np.arange(40) % 2]
    gaussian = copies + 0.2 * rng.standard_normal((n, 40))
    modulated = copies + 0.2 * amplitude * rng.standard_normal((n, 40))
    # 10 copies of each signal in the chunk: its own noise barely reaches the targets' residuals
    chunk, targets = np.arange(20), np.arange(20, 30)
    results = {}
    for name, x in (("gaussian", gaussian), ("modulated", modulated)):
        shape = ResidualShape(Moments.of(x), [chunk], [targets])
        for start in range(0, n, 1000):
            shape.update(x[start : start + 1000])
        results[name] = shape.result()
    model = Ridge(alpha=1e-8).fit(modulated[:, chunk], modulated[:, targets])
    resid = modulated[:, targets] - model.predict(modulated[:, chunk])
    assert results["modulated"]["abs_skew"][0] == pytest.approx(np.abs(stats.skew(resid)).mean(), rel=1e-6)
    assert results["modulated"]["abs_excess_kurtosis"][0] == pytest.approx(np.abs(stats.kurtosis(resid)).mean(), rel=1e-6)
    sq = np.corrcoef(resid**2, rowvar=False)
    assert results["modulated"]["abs_sq_corr"][0] == pytest.approx(np.abs(sq[~np.eye(10, dtype=bool)]).mean(), rel=1e-6)
    # independent Gaussian noise: all ~0 (sampling error); shared amplitude: clearly not
    assert results["gaussian"]["abs_excess_kurtosis"][0] < 0.3 and results["gaussian"]["abs_sq_corr"][0] < 0.05
    assert results["modulated"]["abs_excess_kurtosis"][0] > 1.0 and results["modulated"]["abs_sq_corr"][0] > 0.2


def test_moments_on_torch_device_agree() -> None:
    x = _layer(np.random.default_rng(7), 50, 6)
    m = Moments.of(torch.from_numpy(x), device="cpu")
    np.testing.assert_allclose(m.scatter.numpy(), Moments.of(x).scatter.numpy())
