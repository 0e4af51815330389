"""Exact Information Imbalance between Euclidean spaces, blocked and memory-bounded.

The Information Imbalance of Glielmo, Zeni, Cheng, Csányi and Laio ("Ranking the information
content of distance measures", PNAS Nexus 1, pgac039, 2022) from space A to space B, with the
same N points described in both, is

    Delta(A -> B) = 2 / (N k) * sum_i sum_{j in NN_k^A(i)} r^B_ij

where NN_k^A(i) are the k nearest neighbours of point i in A and r^B_ij is the rank of j among
i's neighbours in B (1 for the nearest). Delta ~ 0: A predicts B's neighbourhoods (A holds B's
information); Delta ~ 1: A says nothing about B.

Conventions (the same in every function of this module)
-------------------------------------------------------
* Distances are Euclidean.
* **Rank** of j for i in space B: ``1 + #{m != i : d_B(i, m) < d_B(i, j)}``. Ranks are exact
  (no cap, every point is ranked) and tied points share the lowest rank.
* **Nearest neighbours** of i (in A): the k points m != i with the smallest distance, ties broken
  by the lowest index; they are returned ordered by (distance, index).

How
---
Rows of squared distances are produced block by block as ``||x_j||^2 - 2 x_i . x_j`` with one
float64 GEMM per tile (the ``||x_i||^2`` term is constant along a row, so it changes no
comparison and is dropped). float64 keeps the cancellation error ~1e-16 of the squared norms:
only distinct distances that agree to about 15 significant digits could be ordered differently
from exact arithmetic, and identical points always get identical distances (the same products
are summed in the same order). No N x N matrix is ever held: row blocks and column tiles are
sized from ``memory_budget``. All work is done by torch, so ``device="cuda"`` runs the very same
code on a GPU.

For many chunks of one full space (:func:`chunk_information_imbalances`) the full-space
neighbours are found once, each chunk costs one pass over its own (w_c-dimensional) distances,
and Delta(chunk -> full) for *all* chunks comes from a single pass over the full-space
distances: each row is sorted once and every chunk's neighbour is ranked by binary search, so
the W-dimensional distances are computed twice in total rather than once per chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "chunk_information_imbalances",
    "information_imbalance",
    "nearest_neighbours",
    "neighbour_ranks",
]

#: Working memory (bytes) of one blocked pass, on the chosen device, not counting the inputs.
DEFAULT_MEMORY_BUDGET = 128 * 2**20

# Ranking more neighbours than this per row: sort the row once and binary-search each
# neighbour's distance (N log N per row) instead of one comparison pass per neighbour (N each).
_SORT_ABOVE = 32

# A byte lane of an int64 word can accumulate 255 zero-or-one bytes without carrying over.
_LANE_WORDS = 255
_PAD = 8 * _LANE_WORDS


class _Float64Rows:
    """Rows of ``x[:, cols]`` in float64, tile by tile, kept whole when they fit ``cache_bytes``."""

    def __init__(self, x: torch.Tensor, cols: torch.Tensor | None, cache_bytes: int) -> None:
        self._x = x
        self._cols = cols
        self.n = x.shape[0]
        self.d = x.shape[1] if cols is None else int(cols.numel())
        # A tile costs 8 bytes per value, plus 4 for the gathered copy before conversion.
        per_value = 8 if cols is None else 12
        self._cache = self._convert(0, self.n) if self.n * self.d * per_value <= cache_bytes else None
        self.tile = self.n if self._cache is not None else max(1, cache_bytes // (per_value * self.d))
        self.sq_norms = torch.cat([_row_dots(self.get(s, min(s + self.tile, self.n))) for s in range(0, self.n, self.tile)])

    def _convert(self, start: int, stop: int) -> torch.Tensor:
        rows = self._x[start:stop]
        if self._cols is not None:
            rows = rows.index_select(1, self._cols)
        return rows.to(torch.float64)

    def get(self, start: int, stop: int) -> torch.Tensor:
        return self._cache[start:stop] if self._cache is not None else self._convert(start, stop)


def _row_dots(rows: torch.Tensor) -> torch.Tensor:
    """Squared norm of each row, in pieces of about 8 MiB so the squares never double a tile."""
    piece = max(1, 2**20 // max(1, rows.shape[1]))
    return torch.cat([r.square().sum(1) for r in rows.split(piece)])


def _sorted_rows(blk: torch.Tensor) -> torch.Tensor:
    """Each row sorted ascending."""
    if blk.device.type == "cpu":
        # numpy's SIMD sort is ~5x faster than torch.sort on CPU and allocates no index array.
        return torch.from_numpy(np.sort(blk.numpy(), axis=1))
    return torch.sort(blk, dim=1).values


def _count_true(mask: torch.Tensor) -> torch.Tensor:
    """Number of True per row of a (b, P) bool tensor, P a multiple of 8 * 255, padding False.

    torch reduces bool tensors element by element (slowly on CPU); summing the bytes as packed
    int64 words, 255 words at a time so that no byte lane overflows, is ~100x faster.
    """
    b = mask.shape[0]
    lanes = mask.view(torch.uint8).view(torch.int64).view(b, -1, _LANE_WORDS).sum(2)
    return lanes.view(torch.uint8).view(b, -1).sum(1)


def _rows_per_block(n: int, d: int, n_queries: int, budget: int) -> int:
    """Rows per block so that the block's buffers fit ``budget`` bytes."""
    per_element = 8 + 1  # float64 distances and a bool comparison mask
    if n_queries > _SORT_ABOVE:
        per_element += 16  # sorted rows (and, on GPUs, torch.sort's int64 indices)
    per_row = per_element * (n + _PAD) + 8 * d + 32 * (n_queries + 2)
    return int(max(1, min(n, budget // per_row)))


def _blocks(
    x: torch.Tensor,
    cols: torch.Tensor | None,
    k: int,
    queries: torch.Tensor | None,
    block_rows: int | None,
    memory_budget: int,
) -> Iterator[tuple[int, int, torch.Tensor | None, torch.Tensor | None]]:
    """One blocked pass over the distances of the space ``x[:, cols]``.

    Yields ``(start, stop, neighbours, ranks)`` per row block: the k nearest neighbours of rows
    start..stop-1 (if k > 0) and the ranks of the points ``queries[start:stop]`` (if given).
    """
    n = x.shape[0]
    n_queries = 0 if queries is None else queries.shape[1]
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"block_rows must be positive, got {block_rows}")
    rows = _Float64Rows(x, cols, memory_budget // 2)
    b = min(n, block_rows) if block_rows else _rows_per_block(n, rows.d, n_queries, memory_budget // 2)
    key = torch.empty(b, n, dtype=torch.float64, device=x.device)
    if 0 < n_queries <= _SORT_ABOVE:
        mask = torch.zeros(b, -(-n // _PAD) * _PAD, dtype=torch.bool, device=x.device)
    diag = torch.arange(b, device=x.device)
    for start in range(0, n, b):
        stop = min(start + b, n)
        m = stop - start
        blk = key[:m]
        xr = rows.get(start, stop)
        for c0 in range(0, n, rows.tile):
            c1 = min(c0 + rows.tile, n)
            torch.addmm(rows.sq_norms[c0:c1], xr, rows.get(c0, c1).T, alpha=-2.0, out=blk[:, c0:c1])
        # A point is never its own neighbour, nor counted as closer than one.
        blk[diag[:m], diag[:m] + start] = torch.inf
        neighbours = _nearest_in_block(blk, k) if k else None
        ranks = None
        if queries is not None:
            thresholds = blk.gather(1, queries[start:stop])
            if n_queries > _SORT_ABOVE:
                ordered = _sorted_rows(blk)
                ranks = torch.searchsorted(ordered, thresholds) + 1
            else:
                hits = mask[:m]
                counts = []
                for q in range(n_queries):
                    torch.lt(blk, thresholds[:, q : q + 1], out=hits[:, :n])
                    counts.append(_count_true(hits))
                ranks = torch.stack(counts, dim=1) + 1
        yield start, stop, neighbours, ranks


def _nearest_in_block(blk: torch.Tensor, k: int) -> torch.Tensor:
    """The k smallest entries' columns per row, ties by lowest column, ordered by (value, column)."""
    n = blk.shape[1]
    if k == 1:
        # torch.min returns the first index among equal minima, which is the tie rule.
        return blk.min(dim=1).indices[:, None]
    values, idx = torch.topk(blk, min(k + 1, n - 1), dim=1, largest=False)
    if k + 1 <= n - 1:
        # topk picks arbitrarily among values equal to the k-th; redo those rows by lowest index.
        tied = torch.nonzero(values[:, k] == values[:, k - 1]).flatten()
        idx = idx[:, :k].clone()
        if tied.numel():
            sub = blk[tied]
            kth = values[tied, k - 1 : k]
            less = sub < kth
            equal = sub == kth
            need = k - less.sum(1, keepdim=True)
            take = less | (equal & (equal.cumsum(1) <= need))
            idx[tied] = torch.nonzero(take)[:, 1].view(-1, k)
    idx = idx.sort(dim=1).values
    order = blk.gather(1, idx).sort(dim=1, stable=True).indices
    return idx.gather(1, order)


def _as_tensor(x: np.ndarray, device: str, name: str) -> torch.Tensor:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (points x features), got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or Inf")
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device)


def _check_k(n: int, k: int) -> None:
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be between 1 and N - 1 = {n - 1}, got {k}")


def nearest_neighbours(
    x: np.ndarray,
    k: int = 1,
    *,
    device: str = "cpu",
    block_rows: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray:
    """Exact k nearest neighbours of every point, Euclidean, without an N x N matrix.

    Parameters
    ----------
    x : (N, D) array
        Points in rows.
    k : int
        Number of neighbours, 1 <= k <= N - 1.
    device : str
        torch device that does the work ("cpu", "cuda", "cuda:1", ...).
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
    parts = [nb for _, _, nb, _ in _blocks(xt, None, k, None, block_rows, memory_budget)]
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

    ``ranks[i, q] = 1 + #{m != i : d(i, m) < d(i, neighbours[i, q])}``: no rank cap, and tied
    points share the lowest rank.

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
    parts = [r for _, _, _, r in _blocks(xt, None, 0, queries, block_rows, memory_budget)]
    return torch.cat(parts).cpu().numpy()


def _as_queries(neighbours: np.ndarray, n: int, device: torch.device) -> torch.Tensor:
    nb = np.asarray(neighbours)
    if nb.ndim != 2 or nb.shape[0] != n or not np.issubdtype(nb.dtype, np.integer):
        raise ValueError(f"neighbours must be an integer array of shape ({n}, Q), got {nb.dtype} {nb.shape}")
    if nb.size and (nb.min() < 0 or nb.max() >= n or (nb == np.arange(n)[:, None]).any()):
        raise ValueError("neighbours must be indices of other points (0..N-1, never the point itself)")
    return torch.from_numpy(nb.astype(np.int64)).to(device)


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
    device : str
        torch device that does the work ("cpu", "cuda", ...).
    block_rows : int, optional
        Rows of distances per block; by default chosen from ``memory_budget``.
    memory_budget : int
        Bytes of working memory per blocked pass.

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
    nn_a = torch.cat([nb for _, _, nb, _ in _blocks(xa, None, k, None, block_rows, memory_budget)])
    total = sum(int(r.sum()) for _, _, _, r in _blocks(xb, None, 0, nn_a, block_rows, memory_budget))
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

    For chunk S (a set of columns of ``x_full``), with X_S the points restricted to S:
    ``Delta(S -> full)`` = :func:`information_imbalance` (X_S, X) and ``Delta(full -> S)`` =
    :func:`information_imbalance` (X, X_S), computed exactly with the module's tie rules.

    Cost: two passes over the full-space distances in all (neighbours once; one pass that
    ranks every chunk's neighbours at once, by sorting each row) plus one pass per chunk over
    its own w_c-dimensional distances; memory stays within ``memory_budget`` per pass plus
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
    cols = []
    for c, chunk in enumerate(chunks):
        idx = np.asarray(chunk)
        if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"chunk {c} must be a non-empty 1-D integer array of column indices")
        if idx.min() < 0 or idx.max() >= w:
            raise ValueError(f"chunk {c} has column indices outside 0..{w - 1}")
        cols.append(torch.from_numpy(idx.astype(np.int64)).to(xt.device))
    out = np.zeros((len(cols), 2))
    if not cols:
        return out
    nn_full = torch.cat([nb for _, _, nb, _ in _blocks(xt, None, k, None, block_rows, memory_budget)])
    nn_chunks = torch.empty(n, len(cols) * k, dtype=torch.int64, device=xt.device)
    for c, col in enumerate(cols):
        total = 0
        for start, stop, nb, r in _blocks(xt, col, k, nn_full, block_rows, memory_budget):
            nn_chunks[start:stop, c * k : (c + 1) * k] = nb
            total += int(r.sum())
        out[c, 1] = total
    sums = torch.zeros(len(cols), dtype=torch.int64, device=xt.device)
    for _, _, _, r in _blocks(xt, None, 0, nn_chunks, block_rows, memory_budget):
        sums += r.view(r.shape[0], len(cols), k).sum((0, 2))
    out[:, 0] = sums.cpu().numpy()
    return out * (2.0 / (n * n * k))
