"""Noisy clones or collapse: how many dimensions the last hidden layer really uses, and the regime it is in.

Redundant representations (Doimo et al. 2022) are clones that carry the same signal and differ by
nearly independent noise. A layer can also look redundant because it has collapsed onto the
(C - 1)-dimensional simplex of its class means ("neural collapse", Papyan, Han and Donoho, PNAS 2020):
then any chunk a little wider than C - 1 neurons spans the layer, the clone size is "the first grid size
above C - 1" and the residuals are near zero. These diagnostics tell the two apart, from the moments of
the features X (N x W) augmented with the one-hot labels Y (N x C) that `mitosis clones` accumulates:

- **top-(C-1) share**: the fraction of the feature variance in the C - 1 leading principal directions,
  sum_{k < C-1} lambda_k / sum_k lambda_k (lambda the eigenvalues of the covariance);
- **participation ratio** (effective dimension): (sum_k lambda_k)^2 / sum_k lambda_k^2 = tr(S)^2 / ||S||_F^2;
- **NC1**: within-class over between-class variability, tr(Sigma_W Sigma_B^+) / C, with
  Sigma_W = (1/N) sum_c sum_{n in c} (x_n - mu_c)(x_n - mu_c)^T and
  Sigma_B = (1/C) sum_c (mu_c - mu)(mu_c - mu)^T (Papyan et al.'s definition); ~0 for a collapsed layer;
- **residual at the clone size**: 1 - R^2 of the first grid chunk at or above w_c* (from the R^2 curve).

`regime` turns them into one word per network with the rule stated there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# The regime rule's thresholds (docs/regime.md explains the choice).
COLLAPSED_SHARE = 0.999  # top-(C-1) share at or above this ...
COLLAPSED_STEPS = 1.0  # ... and w_c* at most this many doublings above C - 1: collapsed
MIN_CLONES = 2.0  # noisy clones: the layer holds at least two clones (w_c* <= W / 2) ...
MIN_RESIDUAL = 1e-5  # ... whose chunk leaves at least this fraction of the variance unexplained (not rounding) ...
CONSTANT_RATIO = 2.0  # ... and w_c* within this factor across the widths that hold at least two clones

REGIME_RULE = (
    f"collapsed: top-(C-1) variance share >= {COLLAPSED_SHARE:g} and w_c* <= {2**COLLAPSED_STEPS:g} (C-1); "
    f"noisy-clones: otherwise, when W / w_c* >= {MIN_CLONES:g}, 1 - R^2 at the clone size >= {MIN_RESIDUAL:g} and "
    f"w_c* within a factor {CONSTANT_RATIO:g} across the widths of the same arch and data set holding >= "
    f"{MIN_CLONES:g} clones; no-clones: otherwise"
)


@dataclass(frozen=True)
class Collapse:
    """Collapse diagnostics of one split (see the module docstring)."""

    top_share: float
    participation_ratio: float
    nc1: float
    classes: int  # classes present in the split (C of "C - 1")


def collapse_diagnostics(scatter: torch.Tensor, mean: torch.Tensor, n: int, width: int) -> Collapse:
    """Collapse diagnostics from the moments of [X, Y] (W feature columns, then C one-hot columns).

    Parameters
    ----------
    scatter : tensor (W + C, W + C) float64
        Centred scatter of the features and one-hot labels.
    mean : tensor (W + C,)
        Their means (the last C are the class frequencies).
    n : int
        Rows N.
    width : int
        W.

    Notes
    -----
    Class means follow from the cross-scatter: S_XY[:, c] = sum_{n in c} (x_n - mu) = n_c (mu_c - mu).
    """
    s_xx = scatter[:width, :width]
    freq = mean[width:]
    present = (freq * n > 0.5).nonzero().squeeze(1)
    classes = int(present.numel())
    counts = freq.index_select(0, present) * n
    deviations = scatter[:width, width:].index_select(1, present) / counts  # (W, C'): mu_c - mu
    total = float(s_xx.trace())
    top = _top_eigenvalue_sum(s_xx, max(classes - 1, 0))
    participation = total**2 / float(s_xx.square().sum()) if total > 0 else float("nan")
    # Sigma_W = (S_XX - sum_c n_c (mu_c - mu)(mu_c - mu)^T) / N; Sigma_B^+ from the SVD of the deviations
    within = (s_xx - (deviations * counts) @ deviations.T) / n
    u, sv, _ = torch.linalg.svd(deviations, full_matrices=False)
    # rank C - 1 at most (sum_c n_c (mu_c - mu) = 0): the pseudo-inverse drops the eigenvalues sv^2 of Sigma_B
    # below W eps of the largest, as numpy's pinv of the W x W matrix does; a rounding-level sv left in would
    # divide Sigma_W by ~1e-30
    rank = sv.square() > float(sv.max()) ** 2 * width * torch.finfo(sv.dtype).eps if sv.numel() else sv > 0
    u, sv = u[:, rank], sv[rank]
    # tr(Sigma_W Sigma_B^+) / C with Sigma_B = D D^T / C: tr(Sigma_W U diag(C / sv^2) U^T) / C
    nc1 = float(((u * (within @ u)).sum(0) / sv.square()).sum()) if sv.numel() else float("nan")
    return Collapse(top / total if total > 0 else float("nan"), participation, nc1, classes)


def _top_eigenvalue_sum(matrix: torch.Tensor, k: int) -> float:
    """Sum of the k largest eigenvalues of a symmetric positive semi-definite matrix.

    Lanczos (ARPACK) to machine precision for the few leading ones of a wide layer (2x faster than the
    whole spectrum at W = 2,048); the full symmetric eigendecomposition for small matrices or when it
    does not converge.
    """
    import scipy.sparse.linalg

    w = int(matrix.shape[0])
    if k <= 0:
        return 0.0
    if w >= 64 and k < w // 4:
        try:
            values = scipy.sparse.linalg.eigsh(matrix.cpu().numpy(), k=k, which="LA", tol=0, return_eigenvectors=False)
            return float(np.clip(values, 0.0, None).sum())
        except scipy.sparse.linalg.ArpackNoConvergence:
            pass
    return float(torch.linalg.eigvalsh(matrix).flip(0)[:k].clamp_min(0.0).sum())


@dataclass(frozen=True)
class NetworkFacts:
    """What the regime rule reads of one network."""

    width: int
    clone_size: float
    residual: float  # 1 - R^2 at the clone size
    top_share: float
    classes: int
    family: str  # networks of the same family (arch and data set) are compared across widths


def regime(net: NetworkFacts, others: Sequence[NetworkFacts] = ()) -> str:
    """The regime word of a network: ``collapsed``, ``noisy-clones`` or ``no-clones`` (`REGIME_RULE`).

    Parameters
    ----------
    net : NetworkFacts
        The network.
    others : sequence of NetworkFacts
        Every network measured together (the same family's other widths test that w_c* is constant).
    """
    steps_above = np.log2(net.clone_size / max(net.classes - 1, 1))
    if net.top_share >= COLLAPSED_SHARE and steps_above <= COLLAPSED_STEPS:
        return "collapsed"
    if not (net.width / net.clone_size >= MIN_CLONES and net.residual >= MIN_RESIDUAL):
        return "no-clones"
    holding = [o.clone_size for o in others if o.family == net.family and o.width / o.clone_size >= MIN_CLONES]
    holding.append(net.clone_size)
    if max(holding) / min(holding) > CONSTANT_RATIO:
        return "no-clones"
    return "noisy-clones"
