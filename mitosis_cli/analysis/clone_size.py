"""Clone size, number of clones, their growth with the width, and the excess error of chunks.

Doimo et al. (2022) call w_c* the chunk size above which a random chunk reproduces the whole layer
(reconstruction R^2 ~ 0.99); a layer of width W then holds W / w_c* clones, a number that grows
linearly with W above a critical width, and the test error of chunks above w_c* decays like that of
an ensemble of independent members, error(w_c) - error_inf ~ c * w_c^(-1/2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof 1), standard error of the mean and count of finite values."""

    mean: float
    std: float
    sem: float
    n: int


def summarize(values: np.ndarray) -> Summary:
    """Summary of the finite entries of `values` (std and sem are NaN for fewer than two)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return Summary(float("nan"), float("nan"), float("nan"), 0)
    std = float(v.std(ddof=1)) if n > 1 else float("nan")
    return Summary(float(v.mean()), std, std / np.sqrt(n) if n > 1 else float("nan"), n)


def crossing_size(sizes: np.ndarray, curve: np.ndarray, threshold: float) -> float:
    """The chunk size at which an increasing curve first reaches `threshold`, interpolated in log2(size).

    With k the first size whose value reaches the threshold, log2 w = log2 s_{k-1} + (t - y_{k-1}) /
    (y_k - y_{k-1}) * (log2 s_k - log2 s_{k-1}). Returns s_0 when the first size already reaches it and
    NaN when no size does.
    """
    s = np.asarray(sizes, dtype=np.float64)
    y = np.asarray(curve, dtype=np.float64)
    order = np.argsort(s)
    s, y = s[order], y[order]
    reached = np.flatnonzero(y >= threshold)
    if reached.size == 0:
        return float("nan")
    k = int(reached[0])
    if k == 0:
        return float(s[0])
    lo, hi = np.log2(s[k - 1]), np.log2(s[k])
    frac = (threshold - y[k - 1]) / (y[k] - y[k - 1])
    return float(2.0 ** (lo + frac * (hi - lo)))


@dataclass(frozen=True)
class CloneSize:
    """Clone size estimate w_c* with its interval, the rule that produced it and whether it was determined."""

    value: float
    lo: float
    hi: float
    rule: str
    status: str = "ok"


def clone_size(sizes: np.ndarray, mean_r2: np.ndarray, sem_r2: np.ndarray, threshold: float = 0.99) -> CloneSize:
    """Clone size w_c*: the smallest chunk size whose mean reconstruction R^2 reaches `threshold`.

    Rule: w_c* is where the mean R^2 over repeated random chunks first reaches the threshold on the
    grid of chunk sizes, interpolated linearly in log2(size) between the two grid sizes around the
    crossing. The interval [lo, hi] applies the same rule to mean + sem (which crosses earlier: lo) and
    mean - sem (later: hi). Sizes beyond the grid clamp to its largest size.

    Parameters
    ----------
    sizes : array (K,)
        Chunk sizes of the grid.
    mean_r2, sem_r2 : arrays (K,)
        Mean R^2 over repeats and its standard error (NaN sem counts as 0).
    threshold : float
        R^2 that counts as "reproduces the layer" (the paper: about 0.99).
    """
    s = np.asarray(sizes, dtype=np.float64)
    m = np.asarray(mean_r2, dtype=np.float64)
    e = np.nan_to_num(np.asarray(sem_r2, dtype=np.float64), nan=0.0)
    top = float(s.max())

    def cross(curve: np.ndarray) -> float:
        w = crossing_size(s, curve, threshold)
        return top if np.isnan(w) else w

    rule = f"smallest size with mean R^2 >= {threshold:g} (log2-interpolated); interval: mean +/- sem crossings"
    value = cross(m)
    status = "ok"
    if np.isnan(crossing_size(s, m, threshold)):
        status = f"undetermined: mean R^2 stays below {threshold:g} up to the largest size; w_c* set to {top:g}"
    elif value <= float(s.min()):
        status = f"at most the smallest size: mean R^2 already reaches {threshold:g} at {float(s.min()):g}"
    return CloneSize(value, cross(m + e), cross(m - e), rule, status)


@dataclass(frozen=True)
class CloneGrowth:
    """Number of clones vs width: n(W) = max(1, 1 + slope (W - critical_width)), and how well determined."""

    critical_width: float
    slope: float
    status: str = "ok"


def fit_clone_growth(widths: np.ndarray, n_clones: np.ndarray) -> CloneGrowth:
    """Least-squares hinge fit of the number of clones against the width.

    Model: n(W) = 1 for W <= W_c (at most one clone below the critical width) and n(W) = 1 + slope
    (W - W_c) above it. For each candidate W_c the slope is the closed-form least-squares value over the
    widths above W_c (clamped at 0); W_c is scanned on a fine grid over [0, max W) and the pair with the
    least squared error is kept.

    The status says "undetermined" when fewer than three distinct widths lie above the critical width
    (two points always fit a line) or when the slope is 0.

    Raises
    ------
    ValueError
        With fewer than two distinct widths.
    """
    w = np.asarray(widths, dtype=np.float64)
    n = np.asarray(n_clones, dtype=np.float64)
    ok = np.isfinite(w) & np.isfinite(n)
    w, n = w[ok], n[ok]
    if np.unique(w).size < 2:
        raise ValueError("the growth of the number of clones needs at least two distinct widths")
    candidates = np.unique(np.concatenate([np.linspace(0.0, w.max(), 4097)[:-1], w[w < w.max()]]))
    above = np.clip(w[None, :] - candidates[:, None], 0.0, None)  # (K, M)
    excess = n - 1.0
    denom = (above**2).sum(1)
    slope = np.clip((above * excess).sum(1) / np.where(denom > 0, denom, 1.0), 0.0, None)
    sse = ((excess[None, :] - slope[:, None] * above) ** 2).sum(1)
    best = int(np.argmin(sse))
    critical, rate = float(candidates[best]), float(slope[best])
    widths_above = int(np.unique(w[w > critical]).size)
    if rate <= 0:
        status = "undetermined: the number of clones does not grow with the width (slope 0)"
    elif widths_above < 3:
        status = f"undetermined: fewer than three widths above the critical width ({widths_above})"
    else:
        status = "ok"
    return CloneGrowth(critical, rate, status)


def fit_excess_error(sizes: np.ndarray, mean_error: np.ndarray, error_inf: float, clone_size_value: float) -> float:
    """Coefficient c of the excess test error c * w_c^(-1/2) of chunks at or above the clone size.

    Least squares through the origin on the sizes w >= w_c*: c = sum_i e_i w_i^-1/2 / sum_i w_i^-1 with
    e_i = error(w_i) - error_inf. NaN when no size qualifies.
    """
    s = np.asarray(sizes, dtype=np.float64)
    e = np.asarray(mean_error, dtype=np.float64) - error_inf
    use = (s >= clone_size_value * (1 - 1e-9)) & np.isfinite(e)
    if not use.any():
        return float("nan")
    x = s[use] ** -0.5
    return float((e[use] * x).sum() / (x * x).sum())
