"""Reconstruction R^2 and residual correlations from moments, against scikit-learn on the same chunks."""

import os
import signal
import time

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from mitosis_cli.analysis import chunk_regression
from mitosis_cli.analysis.reconstruction import (
    DEGENERATE_VARIANCE,
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


def _ridge_reference(x_fit: np.ndarray, x_score: np.ndarray, chunk: np.ndarray, alpha: float) -> dict[str, float]:
    """Every score from explicit float64 residuals: scikit-learn's ridge, numpy's covariances, the paper's formula.

    Ours: the correlations of the neurons outside the chunk whose residual variance is above
    DEGENERATE_VARIANCE of their variance (the rest are perfectly reconstructed); the paper's: all W neurons.
    """
    xf, xs = x_fit.astype(np.float64), x_score.astype(np.float64)
    model = Ridge(alpha=alpha).fit(xf[:, chunk], xf)
    res = xs - model.predict(xs[:, chunk])
    rest = np.setdiff1d(np.arange(xs.shape[1]), chunk)
    kept = rest[res[:, rest].var(0) > DEGENERATE_VARIANCE * xs[:, rest].var(0)]
    off = np.corrcoef(res[:, kept], rowvar=False)[~np.eye(len(kept), dtype=bool)]
    cov = np.cov(res, rowvar=False)
    paper = np.abs(cov) / (np.sqrt(np.outer(np.diag(cov), np.diag(cov))) + 1e-8)
    return {"r2": r2_score(xs, model.predict(xs[:, chunk]), multioutput="variance_weighted"),
            "abs": np.abs(off).mean(), "frob": np.sqrt((off**2).mean()),
            "paper": paper[np.tril_indices_from(paper, k=-1)].mean()}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("scale", [1.0, 3e-4])  # the paper's weights by their series, and entry by entry
def test_row_blocks_and_threads_match_the_reference(monkeypatch: pytest.MonkeyPatch, threads: int, scale: float) -> None:
    # 32-row blocks (the minimum): W = 100 spans 4 of them, so the blocks below the diagonal, the chunk's
    # neurons on a block edge (32) and inside a later block (40, 70), and the two threads' halves all count
    monkeypatch.setattr(chunk_regression, "_BLOCK_BYTES", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    rng = np.random.default_rng(21)
    x = _layer(rng, 300, 100).astype(np.float64) * scale
    # neuron 50: neuron 0, amplified, plus a little noise: perfectly reconstructed by any chunk holding neuron 0
    # (residual variance 5e-11 of its own: rounding leaves it 2e-6 relative errors), yet at scale 1 far above
    # the paper's 1e-8 (the series holds)
    noise = 3e-3 * scale * rng.standard_normal(300)
    x[:, 50] = np.sqrt(noise.var() / 5e-11 / x[:, 0].var()) * x[:, 0] + noise
    small = np.array([0, 32, 40, 70])  # s < W / 16: all neurons in their own order
    large = np.sort(np.r_[0, 32, rng.choice(np.setdiff1d(np.arange(1, 100), [32, 50]), 18, replace=False)])
    scores = reconstruction_scores(Moments.of(x), [small, large])
    for i, chunk in enumerate((small, large)):
        ref = _ridge_reference(x, x, chunk, 1e-8)
        assert scores.r2[i] == pytest.approx(ref["r2"], abs=1e-10)
        assert scores.residual_abs_corr[i] == pytest.approx(ref["abs"], rel=1e-7)
        assert scores.residual_frob_corr[i] == pytest.approx(ref["frob"], rel=1e-7)
        assert scores.residual_abs_corr_paper[i] == pytest.approx(ref["paper"], rel=1e-6)


def test_the_block_threads_work_in_a_forked_child(monkeypatch: pytest.MonkeyPatch) -> None:
    # the two-thread pool is cached: a child forked after its first use (mutmut, multiprocessing) inherits it
    # without its threads and must make a new one rather than wait forever on the dead one's queue
    monkeypatch.setattr(chunk_regression, "_BLOCK_BYTES", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    moments = Moments.of(_layer(np.random.default_rng(30), 100, 70).astype(np.float64))
    expected = reconstruction_scores(moments, [np.array([3, 40])]).residual_abs_corr[0]
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 when it gets the parent's number, never back into pytest
        code = 1
        try:
            code = 0 if reconstruction_scores(moments, [np.array([3, 40])]).residual_abs_corr[0] == expected else 1
        finally:
            os._exit(code)
    for _ in range(200):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung on the inherited thread pool")


@pytest.mark.parametrize("size", [1, 8])  # s < W / 16 (all neurons) and the gathered complement
def test_a_large_ridge_penalty_matches_sklearn(size: int) -> None:
    # alpha 1e-3 of the chunk's scatter: the O(alpha) terms of both paths (the chunk's own residuals alpha X_S G^-1,
    # their in- and out-of-sample sums of squares, the out-of-sample one's skip bound) are no longer negligible
    rng = np.random.default_rng(22)
    x_train, x_test = (10 * _layer(rng, n, 24, shift=shift).astype(np.float64) for n, shift in ((250, 1.5), (200, 1.0)))
    alpha = 300.0
    chunk = np.sort(rng.choice(24, size, replace=False))
    scores = reconstruction_scores(Moments.of(x_test), [chunk], fit=Moments.of(x_train), alpha=alpha)
    ref = _ridge_reference(x_test, x_test, chunk, alpha)
    assert scores.r2[0] == pytest.approx(ref["r2"], abs=1e-10)
    assert scores.r2_out_of_sample[0] == pytest.approx(_ridge_reference(x_train, x_test, chunk, alpha)["r2"], abs=1e-10)
    assert scores.residual_abs_corr[0] == pytest.approx(ref["abs"], rel=1e-8)
    assert scores.residual_frob_corr[0] == pytest.approx(ref["frob"], rel=1e-8)
    assert scores.residual_abs_corr_paper[0] == pytest.approx(ref["paper"], rel=1e-8)


def test_without_correlations_only_r2_is_computed() -> None:
    rng = np.random.default_rng(23)
    x = _layer(rng, 150, 20).astype(np.float64)
    chunks = [np.array([3]), np.sort(rng.choice(20, 10, replace=False))]
    scores = reconstruction_scores(Moments.of(x), chunks, correlations=False)
    np.testing.assert_allclose(scores.r2, [_ridge_reference(x, x, c, 1e-8)["r2"] for c in chunks], atol=1e-10)
    for values in (scores.residual_abs_corr, scores.residual_frob_corr, scores.residual_abs_corr_paper):
        assert np.isnan(values).all()


def test_chunks_of_any_integer_dtype() -> None:
    x = _layer(np.random.default_rng(24), 120, 12)
    chunks = [np.array([1, 5, 9]), np.arange(7)]
    moments = Moments.of(x)
    expected = reconstruction_scores(moments, chunks)
    for dtype in (np.int16, np.uint8):
        scores = reconstruction_scores(moments, [c.astype(dtype) for c in chunks])
        np.testing.assert_allclose(scores.r2, expected.r2, rtol=0, atol=0)
        np.testing.assert_allclose(scores.residual_abs_corr, expected.residual_abs_corr, rtol=0, atol=0)


def test_ridge_eigen_fallback_keeps_the_whitened_scatter() -> None:
    # exact copies at a large scale: S_SS + alpha I is singular in float64, Cholesky fails
    rng = np.random.default_rng(25)
    x = _layer(rng, 200, 8).astype(np.float64) * 1e6
    x[:, 3] = x[:, 1]
    moments, chunk = Moments.of(x), np.array([1, 2, 3])
    gram = moments.scatter[chunk][:, chunk] + 1e-8 * torch.eye(3, dtype=torch.float64)
    assert int(torch.linalg.cholesky_ex(gram)[1]) != 0
    ridge = ridge_from_moments(moments, chunk)
    cross = moments.scatter[chunk]
    # Z^T Z = S_WS G^-1 S_SW = S_WS B (the residual scatter's identity), relative to the scatter's scale
    np.testing.assert_allclose((ridge.z.T @ ridge.z).numpy(), (cross.T @ ridge.coef).numpy(),
                               atol=1e-9 * float(moments.scatter.abs().max()))
    pred = x[:, chunk] @ ridge.coef.numpy() + ridge.intercept.numpy()
    ref = Ridge(alpha=1e-8).fit(x[:, [1, 2]], x).predict(x[:, [1, 2]])  # the copy adds nothing
    np.testing.assert_allclose(pred, ref, rtol=0, atol=1e-6 * np.abs(x).max())


def _shape_reference(resid: np.ndarray) -> dict[str, float]:
    sq = np.corrcoef(resid**2, rowvar=False)
    return {"abs_skew": np.abs(stats.skew(resid)).mean(), "abs_excess_kurtosis": np.abs(stats.kurtosis(resid)).mean(),
            "abs_sq_corr": np.abs(sq[~np.eye(resid.shape[1], dtype=bool)]).mean()}


def test_residual_shape_of_held_out_rows_matches_scipy() -> None:
    # residuals of rows the ridge was not fitted on have a non-zero mean: the central moments' full formulas;
    # a small scale (variances ~1e-6) and a large alpha; two targets (one pair); int16 indices
    rng = np.random.default_rng(26)
    x_fit, x_new = (_layer(rng, 400, 12, shift=s).astype(np.float64) * 1e-3 for s in (1.5, 4.0))
    x_new[:, 7] += np.exp(rng.standard_normal(400)) * 1e-3  # a skewed residual
    chunk, targets, alpha = np.array([0, 2, 4], np.int16), np.array([7, 9], np.int16), 1e-6
    shape = ResidualShape(Moments.of(x_fit), [chunk], [targets], alpha=alpha)
    shape.update(x_new[:150])
    shape.update(x_new[150:])
    model = Ridge(alpha=alpha).fit(x_fit[:, chunk], x_fit[:, targets])
    resid = x_new[:, targets] - model.predict(x_new[:, chunk])
    assert abs(resid.mean(0)).min() > 0.1 * resid.std(0).max()  # the means matter
    got = shape.result()
    for name, value in _shape_reference(resid).items():
        assert got[name][0] == pytest.approx(value, rel=1e-6)


def test_residual_shape_skips_what_it_cannot_measure() -> None:
    rng = np.random.default_rng(27)
    x = _layer(rng, 300, 10).astype(np.float64)
    x[:, 8], x[:, 9] = x[:, 0], 2 * x[:, 1] - x[:, 0]  # perfectly reconstructed by the first chunk
    chunks, targets = [np.array([0, 1]), np.array([2, 3])], [np.array([8, 9]), np.array([5, 6, 7])]
    shape = ResidualShape(Moments.of(x), chunks, targets)
    shape.update(x[:3])  # three rows: no fourth moment yet
    assert all(np.isnan(v).all() for v in shape.result().values())
    shape.update(x[3:])
    got = shape.result()
    assert all(np.isnan(v[0]) for v in got.values())  # nothing left to test in the first chunk
    resid = x[:, 5:8] - Ridge(alpha=1e-8).fit(x[:, [2, 3]], x[:, 5:8]).predict(x[:, [2, 3]])
    for name, value in _shape_reference(resid).items():
        assert got[name][1] == pytest.approx(value, rel=1e-6)


def test_moments_stay_on_the_requested_device() -> None:
    # the meta device computes shapes only: every tensor the accumulator makes must be placed on it
    m = Moments.of(_layer(np.random.default_rng(28), 20, 5), device="meta")
    assert m.mean.device.type == "meta" and m.scatter.device.type == "meta" and m.n == 20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scores_on_cuda_match_the_cpu() -> None:
    rng = np.random.default_rng(29)
    x = _layer(rng, 300, 64).astype(np.float64)
    chunks = [np.array([1, 2]), np.sort(rng.choice(64, 20, replace=False))]
    cpu, gpu = Moments.of(x), Moments.of(x, device="cuda")
    expected, got = reconstruction_scores(cpu, chunks, fit=cpu), reconstruction_scores(gpu, chunks, fit=gpu)
    for name in ("r2", "residual_abs_corr", "residual_frob_corr", "residual_abs_corr_paper", "r2_out_of_sample"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-9, atol=1e-12)
    shapes = []
    for moments in (cpu, gpu):
        shape = ResidualShape(moments, [chunks[0]], [np.array([10, 11, 12])])
        shape.update(torch.as_tensor(x, device=moments.scatter.device))
        shapes.append(shape.result())
    for name, value in shapes[0].items():
        np.testing.assert_allclose(shapes[1][name], value, rtol=1e-9)
