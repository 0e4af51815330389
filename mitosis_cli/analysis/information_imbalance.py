"""Exact Information Imbalance between Euclidean spaces, blocked and memory-bounded.

The Information Imbalance of Glielmo, Zeni, Cheng, Csányi and Laio ("Ranking the information
content of distance measures", PNAS Nexus 1, pgac039, 2022) from space A to space B, with the
same N points described in both, is

    Delta(A -> B) = 2 / (N k) * sum_i sum_{j in NN_k^A(i)} r^B_ij

where NN_k^A(i) are the k nearest neighbours of point i in A and r^B_ij is the rank of j among
i's neighbours in B (1 for the nearest). Delta ~ 0: A predicts B's neighbourhoods (A holds B's
information); Delta ~ 1: A says nothing about B.

Conventions (the same in every function of this module), for the squared Euclidean distance
``D(i, m) = sum_f (x_if - x_mf)^2`` evaluated directly in float64:

* **rank** of j for i: ``1 + #{m != i : D(i, m) < D(i, j)}``, exact (no cap); tied points share
  the lowest rank;
* **nearest neighbours** of i: the k points m != i with the smallest D, ties broken by the lowest
  index, returned ordered by (D, index).

The work is done by :mod:`.blocked_ranks` (float32 GEMMs rechecked in float64 where round-off
could matter, no N x N matrix, on any torch device); docs/information-imbalance.md explains how,
and proves that the results are exactly the ones D defines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .blocked_ranks import _Pass, _Space

__all__ = [
    "DEFAULT_MEMORY_BUDGET", "chunk_information_imbalances", "information_imbalance", "nearest_neighbours", "neighbour_ranks",
]

#: Working memory (bytes) of one blocked pass, on the chosen device, not counting the inputs.
DEFAULT_MEMORY_BUDGET = 128 * 2**20


def _as_tensor(x: np.ndarray, device: str, name: str) -> torch.Tensor:
    """``x`` as a finite float32/float64 (N, D) tensor on ``device``, or a ValueError naming it."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (points x features), got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or Inf")
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device)


def _check_k(n: int, k: int) -> None:
    """A point has N - 1 others: k must be between 1 and N - 1."""
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be between 1 and N - 1 = {n - 1}, got {k}")


def _as_queries(neighbours: np.ndarray, n: int, device: torch.device) -> torch.Tensor:
    """``neighbours`` as an (N, Q) int64 tensor of other points' indices, or a ValueError."""
    nb = np.asarray(neighbours)
    if nb.ndim != 2 or nb.shape[0] != n or not np.issubdtype(nb.dtype, np.integer):
        raise ValueError(f"neighbours must be an integer array of shape ({n}, Q), got {nb.dtype} {nb.shape}")
    if nb.size and (nb.min() < 0 or nb.max() >= n or (nb == np.arange(n)[:, None]).any()):
        raise ValueError("neighbours must be indices of other points (0..N-1, never the point itself)")
    return torch.from_numpy(nb.astype(np.int64)).to(device)


def nearest_neighbours(
    x: np.ndarray,
    k: int = 1,
    *,
    device: str = "cpu",
    block_rows: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray:
    """Exact k nearest neighbours of every point, Euclidean, without an N x N matrix.

    ``NN_k(i)``, the neighbourhoods of the Information Imbalance (Glielmo et al., PNAS Nexus
    2022): the k points m != i with the smallest ``D(i, m) = sum_f (x_if - x_mf)^2``, ties
    broken by the lowest index.

    Parameters
    ----------
    x : (N, D) array
        Points in rows.
    k : int
        Number of neighbours, 1 <= k <= N - 1.
    device : str
        torch device that does the work ("cpu", "cuda", "cuda:1", ...); results are the same on
        every device (GEMMs run in IEEE float32, TF32 switched off for the call).
    block_rows : int, optional
        Rows of distances per block; by default chosen from ``memory_budget``.
    memory_budget : int
        Bytes of working memory for the blocked pass.

    Returns
    -------
    (N, k) int64 array
        Neighbour indices of each point, excluding the point itself, ordered by (distance,
        index): among equidistant candidates the lowest index comes first.
    """
    xt = _as_tensor(x, device, "x")
    _check_k(xt.shape[0], k)
    parts = [nb for _, _, nb, _ in _Pass(xt, None, k, None, block_rows, memory_budget)]
    return torch.cat(parts).cpu().numpy()


def neighbour_ranks(
    x: np.ndarray,
    neighbours: np.ndarray,
    *,
    device: str = "cpu",
    block_rows: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray:
    """Exact ranks, in the space ``x``, of given points around every point.

    The ranks r_ij of the Information Imbalance (Glielmo et al., PNAS Nexus 2022):
    ``ranks[i, q] = 1 + #{m != i : D(i, m) < D(i, neighbours[i, q])}``, D the squared Euclidean
    distance; no rank cap, and tied points share the lowest rank.

    Parameters
    ----------
    x : (N, D) array
        Points in rows.
    neighbours : (N, Q) int array
        For each point i, the Q points (never i itself) to rank, e.g. its neighbours in another
        space.
    device, block_rows, memory_budget
        As in :func:`nearest_neighbours`.

    Returns
    -------
    (N, Q) int64 array
        Ranks between 1 and N - 1.
    """
    xt = _as_tensor(x, device, "x")
    queries = _as_queries(neighbours, xt.shape[0], xt.device)
    parts = [r for _, _, _, r in _Pass(xt, None, 0, queries, block_rows, memory_budget)]
    return torch.cat(parts).cpu().numpy()


def information_imbalance(
    x_a: np.ndarray,
    x_b: np.ndarray,
    k: int = 1,
    *,
    device: str = "cpu",
    block_rows: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> float:
    """Information Imbalance Delta(A -> B) of Glielmo et al. (PNAS Nexus 2022), exact.

    ``Delta(A -> B) = 2 / (N k) * sum_i sum_{j in NN_k^A(i)} r^B_ij``: the mean rank in B of each
    point's k nearest neighbours in A, times 2 / N. About 0 when A holds all of B's information
    (neighbours in A are neighbours in B), about 1 when A holds none of it; the smallest value,
    for B = A, is (k + 1) / N.

    Parameters
    ----------
    x_a : (N, D_A) array
        The points in space A.
    x_b : (N, D_B) array
        The same points, in the same order, in space B.
    k : int
        Neighbours per point in A, 1 <= k <= N - 1. Record N and k beside the value: the
        imbalance depends on both.
    device, block_rows, memory_budget
        As in :func:`nearest_neighbours` (the budget holds for each blocked pass).

    Returns
    -------
    float
        Delta(A -> B). Ranks and neighbours follow the module's tie rules: exact ranks, ties
        share the lowest rank; neighbours in A tied in distance are taken by lowest index.
    """
    xa = _as_tensor(x_a, device, "x_a")
    xb = _as_tensor(x_b, device, "x_b")
    n = xa.shape[0]
    if xb.shape[0] != n:
        raise ValueError(f"x_a and x_b must describe the same points: {n} != {xb.shape[0]} rows")
    _check_k(n, k)
    nn_a = torch.cat([nb for _, _, nb, _ in _Pass(xa, None, k, None, block_rows, memory_budget)])
    total = sum(int(r.sum()) for _, _, _, r in _Pass(xb, None, 0, nn_a, block_rows, memory_budget))
    return 2.0 * total / (n * n * k)


def chunk_information_imbalances(
    x_full: np.ndarray,
    chunks: Sequence[np.ndarray],
    k: int = 1,
    *,
    device: str = "cpu",
    block_rows: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray:
    """Information Imbalance between each chunk of neurons and the full layer, both ways.

    For chunk S (a set of columns of ``x_full``), with X_S the points restricted to S, the
    Information Imbalance (Glielmo et al., PNAS Nexus 2022) from the chunk to the full layer,
    ``Delta(S -> full) = 2 / (N k) * sum_i sum_{j in NN_k^S(i)} r^full_ij``, i.e.
    :func:`information_imbalance` (X_S, X), and back, ``Delta(full -> S)`` =
    :func:`information_imbalance` (X, X_S); exact, with the module's tie rules.

    Cost: two passes over the full-space distances in all (neighbours once; one pass that
    ranks every chunk's neighbours at once) plus one pass per distinct chunk over its own
    w_c-dimensional distances (repeated chunks are computed once; a chunk of all columns in
    order is the full space and costs no pass); memory stays within ``memory_budget`` per pass plus
    N x len(chunks) x k neighbour indices.

    Parameters
    ----------
    x_full : (N, W) array
        The full layer, points in rows.
    chunks : sequence of 1-D int arrays
        Column (neuron) indices of each chunk.
    k : int
        Neighbours per point, 1 <= k <= N - 1.
    device, block_rows, memory_budget
        As in :func:`information_imbalance`.

    Returns
    -------
    (len(chunks), 2) float64 array
        Column 0: Delta(chunk -> full); column 1: Delta(full -> chunk).
    """
    xt = _as_tensor(x_full, device, "x_full")
    n, w = xt.shape
    _check_k(n, k)
    # Identical chunks (the full-width chunk of every repeat, say) have identical imbalances:
    # each distinct chunk is computed once. A chunk of all columns in order *is* the full space
    # (the same D, summed in the same order), so it needs no pass of its own either.
    distinct: dict[bytes, int] = {}
    which: list[int] = []
    for c, chunk in enumerate(chunks):
        idx = np.asarray(chunk)
        if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"chunk {c} must be a non-empty 1-D integer array of column indices")
        if idx.min() < 0 or idx.max() >= w:
            raise ValueError(f"chunk {c} has column indices outside 0..{w - 1}")
        which.append(distinct.setdefault(idx.astype(np.int64).tobytes(), len(distinct)))
    out = np.zeros((len(which), 2))
    if not which:
        return out
    everything = np.arange(w, dtype=np.int64).tobytes()
    cols = [torch.from_numpy(np.frombuffer(key, dtype=np.int64).copy()).to(xt.device) for key in distinct if key != everything]
    sums = np.zeros((len(distinct), 2))
    full = _Space(xt, None, torch.float32, memory_budget // 2)  # shared by both full-space passes
    nn_full = torch.cat([nb for _, _, nb, _ in _Pass(xt, None, k, None, block_rows, memory_budget, full)])
    if everything in distinct:
        # Rank, in the full space, of each point's own q-th nearest neighbour: 1 + the number of
        # its k nearest neighbours strictly closer (any strictly closer point is among them).
        rows = torch.arange(n, device=xt.device).repeat_interleave(k)
        d = full.distances(rows, nn_full.flatten()).view(n, k)
        sums[distinct[everything]] = int((d[:, None, :] < d[:, :, None]).sum()) + n * k
    others = [i for key, i in distinct.items() if key != everything]
    nn_chunks = torch.empty(n, len(cols) * k, dtype=torch.int64, device=xt.device)
    for c, col in enumerate(cols):
        total = 0
        for start, stop, nb, r in _Pass(xt, col, k, nn_full, block_rows, memory_budget):
            nn_chunks[start:stop, c * k : (c + 1) * k] = nb
            total += int(r.sum())
        sums[others[c], 1] = total
    if cols:
        to_full = torch.zeros(len(cols), dtype=torch.int64, device=xt.device)
        for _, _, _, r in _Pass(xt, None, 0, nn_chunks, block_rows, memory_budget, full):
            to_full += r.view(r.shape[0], len(cols), k).sum((0, 2))
        sums[others, 0] = to_full.cpu().numpy()
    out[:] = sums[which]
    return out * (2.0 / (n * n * k))
