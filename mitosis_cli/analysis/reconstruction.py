"""Reconstruction of the whole layer from a chunk, and the noise left over, from second moments only.

Doimo et al. (2022) fit, for every chunk S, a ridge regression (alpha 1e-8, with intercept) from the
chunk's neurons X[:, S] to all W neurons and report the variance-weighted coefficient of determination

    R^2 = 1 - sum_j sum_n (x_nj - xhat_nj)^2 / sum_j sum_n (x_nj - mean_j)^2,

and the mean absolute off-diagonal correlation of the residuals X - Xhat ("noise independence").

Everything here follows from the centred scatter matrix S = sum_n (x_n - mu)(x_n - mu)^T (one pass over
the data, float64) instead of refitting on the N x W data for every chunk. With the intercept the ridge
works on centred data (as scikit-learn's Ridge does), so its coefficients are

    B = (S_SS + alpha I)^{-1} S_SW,   intercept = mu_W - B^T mu_S,

and with the Cholesky factor L L^T = S_SS + alpha I and Z = L^{-1} S_SW the residual scatter is

    R^T R = S_WW - Z^T Z - alpha B^T B                           (exact),

so the in-sample residual sum of squares is tr(S) - ||Z||_F^2 - alpha ||B||_F^2. The residual
correlations come from the block of R^T R over the neurons c outside the chunk (the Schur complement
S_cc - Z_c^T Z_c minus the O(alpha) term alpha B_c^T B_c). The per-chunk linear algebra, and how it is
kept near the machine's arithmetic limit, is in `chunk_regression`.

Two residual correlations are reported. Ours excludes the chunk's own neurons: they reconstruct
themselves, and their residuals are O(alpha) numbers with no meaning. The paper's (its code's `mean_corr`)
averages over all W neurons, chunk included, with a regularised denominator; its values are roughly
ours times m (m - 1) / (W (W - 1)), m = W - s, so the two must not be compared with each other.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mitosis_cli.analysis.chunk_regression import DEGENERATE_VARIANCE, ChunkRegression, OutOfSample

RIDGE_ALPHA = 1e-8  # the paper's ridge penalty


@dataclass(frozen=True)
class Moments:
    """First and second moments of the rows of an (N, D) matrix, float64.

    Attributes
    ----------
    n : int
        Number of rows N.
    mean : torch.Tensor, shape (D,)
        Column means mu.
    scatter : torch.Tensor, shape (D, D)
        Centred scatter sum_n (x_n - mu)(x_n - mu)^T (N times the biased covariance).
    """

    n: int
    mean: torch.Tensor
    scatter: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def leading(self, dim: int) -> Moments:
        """The moments of the first `dim` columns (views, no copy)."""
        return Moments(self.n, self.mean[:dim], self.scatter[:dim, :dim])

    @classmethod
    def of(cls, rows: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> Moments:
        """The moments of an in-memory matrix (convenience for small data and tests)."""
        acc = MomentAccumulator(int(rows.shape[1]), device)
        acc.update(rows)
        return acc.result()


class MomentAccumulator:
    """Streamed, numerically stable moments: blocks merged with Chan, Golub and LeVeque's pairwise update.

    Each block is centred on its own mean before its scatter is formed (float64 GEMMs), then merged:
    S = S_a + S_b + (n_a n_b / n) (mu_b - mu_a)(mu_b - mu_a)^T. The scatter is symmetric: only the
    blocks on and below the diagonal of a 4 x 4 block grid are multiplied (10 of 16, the symmetric
    product's work), the upper ones mirrored when the result is taken.
    """

    def __init__(self, dim: int, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.scatter = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)
        panels = 4 if dim >= 256 else 1
        edges = [round(i * dim / panels) for i in range(panels + 1)]
        self._panels = list(itertools.pairwise(edges))

    def update(self, block: np.ndarray | torch.Tensor) -> None:
        """Add the rows of a (n, D) block."""
        x = torch.as_tensor(block).to(self.device, torch.float64, copy=True)  # centred in place below
        n_b = int(x.shape[0])
        if n_b == 0:
            return
        mean_b = x.mean(dim=0)
        x -= mean_b
        n = self.n + n_b
        delta = mean_b - self.mean
        for j, (j0, j1) in enumerate(self._panels):
            for i0, i1 in self._panels[: j + 1]:
                self.scatter[j0:j1, i0:i1].addmm_(x[:, j0:j1].T, x[:, i0:i1])
        self.scatter.addr_(delta, delta, alpha=self.n * n_b / n)
        self.mean += delta * (n_b / n)
        self.n = n

    def result(self) -> Moments:
        if self.n == 0:
            raise ValueError("no rows were added")
        for j, (j0, j1) in enumerate(self._panels):  # mirror the blocks below the diagonal
            for i0, i1 in self._panels[:j]:
                self.scatter[i0:i1, j0:j1] = self.scatter[j0:j1, i0:i1].T
        return Moments(self.n, self.mean, self.scatter)


@dataclass(frozen=True)
class RidgeFactor:
    """A chunk's ridge fit from moments: whitened cross-scatter Z = L^{-1} S_ST and coefficients B."""

    z: torch.Tensor  # (s, T)
    coef: torch.Tensor  # (s, T): B
    intercept: torch.Tensor  # (T,): mu_T - B^T mu_S


def ridge_from_moments(moments: Moments, chunk: np.ndarray | torch.Tensor, alpha: float = RIDGE_ALPHA,
                       targets: np.ndarray | torch.Tensor | None = None) -> RidgeFactor:
    """Ridge regression with intercept from the chunk's columns to the `targets` columns (default: all D).

    Solves (S_SS + alpha I) B = S_ST, identical to scikit-learn's ``Ridge(alpha, fit_intercept=True)``
    (which penalises the centred Gram matrix). Falls back from Cholesky to an eigendecomposition when
    S_SS + alpha I is not numerically positive definite (collinear neurons at a large scale).
    """
    device = moments.scatter.device
    idx = torch.as_tensor(chunk, device=device)
    rows = moments.scatter.index_select(0, idx)  # S_SD, (s, D)
    gram = rows.index_select(1, idx)
    tgt = None if targets is None else torch.as_tensor(targets, device=device)
    cross = rows if tgt is None else rows.index_select(1, tgt)  # S_ST
    gram.diagonal().add_(alpha)
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        del gram, rows  # free (s x D) buffers early: at s ~ W each is as large as the scatter matrix
        z = torch.linalg.solve_triangular(factor, cross, upper=False)
        del cross
        coef = torch.linalg.solve_triangular(factor.T, z, upper=True)
    else:  # A = Q diag(lam) Q^T; Z = diag(lam)^-1/2 Q^T S_SW keeps Z^T Z = S_WS A^-1 S_SW
        lam, q = torch.linalg.eigh(gram)
        # Exactly, every eigenvalue is >= alpha; rounding leaves errors ~ eps * lam_max, so eigenvalues below
        # that are noise: flooring them at `tiny` made Z (and R^2) infinite for collinear neurons at large scale.
        lam = lam.clamp_min(max(alpha, float(lam.max()) * lam.shape[0] * torch.finfo(lam.dtype).eps))
        qt_cross = q.T @ cross
        z = qt_cross / lam.sqrt()[:, None]
        coef = q @ (qt_cross / lam[:, None])
    target_mean = moments.mean if tgt is None else moments.mean.index_select(0, tgt)
    intercept = target_mean - coef.T @ moments.mean.index_select(0, idx)
    return RidgeFactor(z, coef, intercept)


@dataclass(frozen=True)
class ReconstructionScores:
    """Per-chunk scores, one entry per row of the chunk array.

    Attributes
    ----------
    r2 : ndarray (R,)
        In-sample variance-weighted R^2 on the data of `moments` (the paper's measure on the test set).
    residual_abs_corr : ndarray (R,)
        Mean |off-diagonal correlation| of the residuals of the m neurons outside the chunk, over the
        m (m - 1) ordered pairs; NaN when fewer than two such neurons have non-zero residual variance.
    residual_frob_corr : ndarray (R,)
        ||C - I||_F / sqrt(m (m - 1)) for the same m x m residual correlation matrix C (the RMS
        off-diagonal correlation).
    residual_abs_corr_paper : ndarray (R,)
        The paper's "mean correlation" (Doimo et al. 2022, their code's ``mean_corr``): with cov the
        (N - 1)-normalised covariance of the residuals of all W neurons,
        ``mean over i > j of |cov_ij| / (sqrt(cov_ii cov_jj) + 1e-8)``. The chunk's own residuals
        are O(alpha), alpha X_S G^-1 (zero without the ridge), and enter with their exact values, which
        matter only when residual variances come near 1e-8 (the paper's float32 code computes them as
        rounding noise of about 1e-7 |x|, which the 1e-8 does not suppress). About
        ``residual_abs_corr * m (m - 1) / (W (W - 1))`` when residual variances are well above 1e-8.
    r2_out_of_sample : ndarray (R,) or None
        R^2 of the ridge fitted on `fit` (train) and scored on `moments` (test), when `fit` is given.
    """

    r2: np.ndarray
    residual_abs_corr: np.ndarray
    residual_frob_corr: np.ndarray
    residual_abs_corr_paper: np.ndarray
    r2_out_of_sample: np.ndarray | None


def reconstruction_scores(
    moments: Moments,
    chunks: np.ndarray | Sequence[np.ndarray],
    *,
    fit: Moments | None = None,
    alpha: float = RIDGE_ALPHA,
    correlations: bool = True,
) -> ReconstructionScores:
    """R^2 of the ridge reconstruction of all neurons from each chunk, and the residuals' correlations.

    Parameters
    ----------
    moments : Moments
        Moments of the split scored in-sample (the paper: test), over the W neurons only.
    chunks : array (R, s) or sequence of index arrays
        Neuron indices of each chunk.
    fit : Moments, optional
        Moments of the split to fit on (train) for the out-of-sample R^2 on `moments`.
    alpha : float
        Ridge penalty on the centred Gram matrix (the paper: 1e-8).
    correlations : bool
        Compute the residual correlations (a (W - s)^2 s step per chunk).

    Returns
    -------
    ReconstructionScores
        Identical chunks (as sets; every chunk of size W) are computed once.

    Notes
    -----
    In-sample: R^2 = 1 - (tr S - ||Z||_F^2 - alpha ||B||_F^2) / tr S with Z = L^{-1} S_SW.
    Out of sample: the test residual sum of squares of the train fit comes from the test moments
    (`chunk_regression.OutOfSample`); the denominator is the test total sum of squares around the
    test mean, as in ``sklearn.metrics.r2_score(..., multioutput="variance_weighted")``.
    """
    rows = [np.sort(np.asarray(c, dtype=np.int64)) for c in chunks]
    first_of: dict[bytes, int] = {}
    device = moments.scatter.device
    engine = ChunkRegression(moments.scatter, moments.n, alpha)
    oos = (OutOfSample(fit.scatter, fit.mean, moments.scatter, moments.mean, moments.n, alpha)
           if fit is not None else None)
    columns = np.full((len(rows), 5), np.nan)  # r2, abs, frob, paper, r2 out of sample
    for i, chunk in enumerate(rows):
        j = first_of.setdefault(chunk.tobytes(), i)
        if j != i:  # the same set of neurons as an earlier chunk: same numbers
            columns[i] = columns[j]
            continue
        idx = torch.as_tensor(chunk, device=device)
        sc = engine.scores(idx, correlations)
        columns[i, :4] = (sc.r2, sc.residual_abs_corr, sc.residual_frob_corr, sc.residual_abs_corr_paper)
        if oos is not None:
            columns[i, 4] = 1.0 - oos.rss(idx) / engine.total
    return ReconstructionScores(columns[:, 0], columns[:, 1], columns[:, 2], columns[:, 3],
                                columns[:, 4] if fit is not None else None)


class ResidualShape:
    """Gaussianity and independence of a chunk's residuals beyond their correlations (streamed).

    For a few chunks and a subsample of the neurons outside each (the targets), the in-sample ridge
    residuals r = x_t - xhat_t are accumulated block by block, and three numbers are reported per chunk:

    - ``abs_skew``: mean over targets of |skewness| m3 / m2^1.5;
    - ``abs_excess_kurtosis``: mean over targets of |m4 / m2^2 - 3|;
    - ``abs_sq_corr``: mean |off-diagonal correlation| of the squared residuals r_i^2, r_j^2.

    For independent Gaussian noise all three are ~0, up to sampling error of about sqrt(6 / N),
    sqrt(24 / N) and sqrt(2 / (pi N)) respectively. Heavy tails or a shared noise amplitude (noise
    that is uncorrelated but not independent) raise them; a residual made of a missing signal rather
    than noise usually shows up as non-zero skewness/kurtosis.
    """

    def __init__(self, moments: Moments, chunks: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                 alpha: float = RIDGE_ALPHA) -> None:
        if len(chunks) != len(targets):
            raise ValueError("one target array per chunk is needed")
        device = moments.scatter.device
        self._fits: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._target_var: list[torch.Tensor] = []
        for chunk, target in zip(chunks, targets, strict=True):
            idx = torch.as_tensor(np.asarray(chunk, np.int64), device=device)
            tgt = torch.as_tensor(np.asarray(target, np.int64), device=device)
            ridge = ridge_from_moments(moments, idx, alpha, targets=tgt)
            self._fits.append((idx, tgt, ridge.coef, ridge.intercept))
            self._target_var.append(moments.scatter.diagonal().index_select(0, tgt) / moments.n)
        self._sums: list[tuple[torch.Tensor, ...] | None] = [None] * len(self._fits)
        self._device = device
        self.n = 0

    def update(self, block: np.ndarray | torch.Tensor) -> None:
        """Add a (n, W) block of the rows the moments were computed on (or of held-out rows: the moments are central)."""
        x = torch.as_tensor(block).to(self._device, torch.float64)
        self.n += int(x.shape[0])
        for i, (idx, tgt, coef, intercept) in enumerate(self._fits):
            resid = x.index_select(1, tgt) - intercept - x.index_select(1, idx) @ coef
            sq = resid.square()
            sums = (resid.sum(0), sq.sum(0), (sq * resid).sum(0), sq.square().sum(0), sq.T @ sq)
            prev = self._sums[i]
            self._sums[i] = sums if prev is None else tuple(a + b for a, b in zip(prev, sums, strict=True))

    def result(self) -> dict[str, np.ndarray]:
        """``{"abs_skew", "abs_excess_kurtosis", "abs_sq_corr"}``, arrays with one value per chunk (NaN n/a)."""
        out = {name: np.full(len(self._fits), np.nan) for name in ("abs_skew", "abs_excess_kurtosis", "abs_sq_corr")}
        for i, sums in enumerate(self._sums):
            if sums is None or self.n < 4:
                continue
            s1, s2, s3, s4, s22 = (t / self.n for t in sums)
            mu = s1
            m2 = s2 - mu**2
            m3 = s3 - 3 * mu * s2 + 2 * mu**3
            m4 = s4 - 4 * mu * s3 + 6 * mu**2 * s2 - 3 * mu**4
            keep = m2 > DEGENERATE_VARIANCE * self._target_var[i]  # perfectly reconstructed targets have no noise to test
            if int(keep.sum()) == 0:
                continue
            out["abs_skew"][i] = float((m3[keep] / m2[keep] ** 1.5).abs().mean())
            out["abs_excess_kurtosis"][i] = float((m4[keep] / m2[keep] ** 2 - 3.0).abs().mean())
            kept = keep.nonzero().squeeze(1)
            cov_sq = s22.index_select(0, kept).index_select(1, kept) - torch.outer(s2[kept], s2[kept])
            var_sq = cov_sq.diagonal().clamp_min(torch.finfo(m2.dtype).tiny)
            corr = cov_sq / torch.sqrt(torch.outer(var_sq, var_sq))
            m = int(kept.shape[0])
            if m >= 2:
                out["abs_sq_corr"][i] = float((corr.abs().sum() - corr.diagonal().abs().sum()) / (m * (m - 1)))
        return out
