"""Blocked, exact nearest neighbours and neighbour ranks: the engine of :mod:`.information_imbalance`.

A pass walks the points in row blocks sized from a memory budget, so no N x N matrix is ever held.
Each block's rows of a key ``K(i, m) = ||z_m||^2 - 2 z_i . z_m`` (z the points, centred and scaled
by a power of two) come from float32 GEMMs, twice as fast as float64 on CPUs and GPUs. A proven
round-off margin M_i bounds how far K strays from the direct float64 distance D; only the
comparisons within 2 M_i of a threshold are rechecked with D, so every neighbour and rank is the one
D defines. Where bands are too wide, GEMMs are summed in slabs of features or redone in float64.
The derivation of M_i and the recheck argument: docs/information-imbalance.md.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch

# Ranking more points than this per row: sort the row once and binary-search each point's key
# (N log N per row) instead of one comparison pass per point (N each).
_SORT_ABOVE = 32

# A byte lane of an int64 word can accumulate 255 zero-or-one bytes without carrying over.
_LANE_WORDS = 255
_PAD = 8 * _LANE_WORDS

# A float32 block whose bands need more than one pair resolved per _PAIR_COST keys is redone,
# with the rest of its pass, in float64 (a resolved pair costs ~2 d scattered reads; a float64
# GEMM about twice a float32 one).
_PAIR_COST = 256

# Features per slab when wide float32 GEMMs are summed in slabs (see _Space.margin).
_SLAB = 256

_U64 = 2.0**-53  # float64's unit roundoff


def _unit_roundoff(dtype: torch.dtype) -> float:
    """u of the GEMM's dtype: float32 or float64."""
    return 2.0**-24 if dtype == torch.float32 else _U64


def _gamma(n: int, u: float) -> float:
    """Higham's gamma_n = n u / (1 - n u)."""
    return n * u / (1.0 - n * u)


class _Space:
    """The points ``x[:, cols]`` of one space, prepared for the GEMM filter and the exact D.

    Holds the GEMM operand ``z = s (x - mu)`` (in ``dtype``, kept whole when it fits
    ``cache_bytes``, else converted tile by tile), the float32/64 norms of z, each row's
    margin M_i (docs/information-imbalance.md) and the direct float64 distance D of any pairs.
    """

    def __init__(self, x: torch.Tensor, cols: torch.Tensor | None, dtype: torch.dtype, cache_bytes: int) -> None:
        self.x, self.cols, self.dtype = x, cols, dtype
        self.n = n = x.shape[0]
        self.d = d = x.shape[1] if cols is None else int(cols.numel())
        self.cache_bytes = cache_bytes
        # One float64 pass for the centre and the scale: column sums, sum of squares, extremes.
        tile = max(1, cache_bytes // (24 * d))
        total = torch.zeros(d, dtype=torch.float64, device=x.device)
        sq = 0.0
        lo = torch.full((d,), math.inf, dtype=torch.float64, device=x.device)
        hi = -lo
        for s in range(0, n, tile):
            r = self._raw(s, min(s + tile, n))
            total += r.sum(0)
            sq += float(r.square().sum())
            lo = torch.minimum(lo, r.min(0).values)
            hi = torch.maximum(hi, r.max(0).values)
        mu = total / n
        spread = sq / n - float(mu.square().sum())  # mean ||x_i - mu||^2, only to decide
        self.centre = float(mu.square().sum()) > spread / 16
        if not self.centre:
            mu = torch.zeros_like(mu)
        self.mu = mu
        largest = float(torch.maximum(hi - mu, mu - lo).max())
        self.scale = 1.0
        if largest > 0 and not 2.0**-40 <= largest <= 2.0**40:
            self.scale = 2.0 ** -math.frexp(largest)[1]  # max |z| < 1
        self.exact = not self.centre and self.scale == 1.0 and x.dtype == dtype
        per_value = torch.finfo(dtype).bits // 8
        fits = (self.exact and cols is None) or n * d * per_value <= cache_bytes  # the input itself costs nothing
        self._cache = self._operand(0, n) if fits else None
        self.tile = n if self._cache is not None else max(1, cache_bytes // (3 * 8 * d))
        sq_norms: list[torch.Tensor] = []
        for s in range(0, n, self.tile):
            rows = self.get(s, min(s + self.tile, n))
            piece = max(1, 2**20 // max(1, d))
            sq_norms += [r.to(torch.float64).square().sum(1) for r in rows.split(piece)]
        self._a = torch.cat(sq_norms)
        self.sq_norms = self._a.to(dtype)  # the GEMM's norm term
        # Raw coordinates of a chunk, for the exact distances, when small enough to keep.
        self._raw_chunk: torch.Tensor | None = None
        if cols is not None and n * d * x.element_size() <= cache_bytes // 4:
            self._raw_chunk = x.index_select(1, cols)

    def margin(self, slab: int) -> torch.Tensor:
        """M_i of every row (docs/information-imbalance.md) for GEMMs summed in slabs of ``slab`` features.

        One slab: Higham's bound for d + 1 terms (d products and the norm), gamma_{d+2} with
        room to spare. S > 1 slabs of at most s features, each a GEMM of its own added to the
        running key: gamma_{s+1} within a slab plus gamma_S for the S additions, each relative
        to the same sum of absolute terms, so gamma_{s+1} + gamma_S (1 + gamma_{s+1}) replaces
        gamma_{d+2}: about d / (s + S) times narrower bands.
        """
        a, d, u = self._a, self.d, _unit_roundoff(self.dtype)
        b = float(a.max()) if self.n else 0.0
        n_slabs = -(-d // slab)
        g = _gamma(slab + 1, u) + _gamma(n_slabs, u) * (1 + _gamma(slab + 1, u)) if n_slabs > 1 else _gamma(d + 2, u)
        delta = 0.0 if self.exact else u + 2 * _U64
        dp = delta / (1 - delta)
        c1 = g * (1 + 2 * u)
        c2 = 2 * u + 4 * dp + 2 * dp * dp + 5 * _gamma(d + 3, _U64) + 8 * _U64
        tiny = torch.finfo(self.dtype).tiny
        return 1.01 * (c1 * (b + 2 * torch.sqrt(a * b)) + c2 * (a + b)) + 4 * (d + 4) * tiny

    def _raw(self, start: int, stop: int) -> torch.Tensor:
        rows = self.x[start:stop]
        if self.cols is not None:
            rows = rows.index_select(1, self.cols)
        return rows.to(torch.float64)

    def _operand(self, start: int, stop: int) -> torch.Tensor:
        if self.exact:
            rows = self.x[start:stop]
            return rows if self.cols is None else rows.index_select(1, self.cols)
        rows = self._raw(start, stop)  # for float64 input without columns: a view of the caller's array
        if self.centre:
            rows = rows - self.mu  # out of place: the points themselves (and the exact D) must stay as given
        if self.scale != 1.0:
            rows = rows * self.scale
        return rows.to(self.dtype)

    def get(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop-1 of the GEMM operand z."""
        return self._cache[start:stop] if self._cache is not None else self._operand(start, stop)

    def keys(self, start: int, stop: int, out: torch.Tensor, slab: int, scratch: torch.Tensor | None) -> None:
        """``out[r, m] = K(start + r, m)``, with +inf on the diagonal (a point is not its own neighbour).

        Summed in slabs of ``slab`` features (``scratch`` holds one slab's product) when d > slab.
        """
        zr = self.get(start, stop)
        for c0 in range(0, self.n, self.tile):
            c1 = min(c0 + self.tile, self.n)
            zc = self.get(c0, c1)
            part = out[:, c0:c1]
            torch.addmm(self.sq_norms[c0:c1], zr[:, :slab], zc[:, :slab].T, alpha=-2.0, out=part)
            for f0 in range(slab, self.d, slab):
                tmp = scratch[: stop - start, : c1 - c0]
                torch.mm(zr[:, f0 : f0 + slab], zc[:, f0 : f0 + slab].T, out=tmp)
                part.add_(tmp, alpha=-2.0)
        diag = torch.arange(stop - start, device=out.device)
        out[diag, diag + start] = torch.inf

    def distances(self, rows: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """Direct float64 distances ``D(rows[p], others[p]) = sum_f (x_rf - x_of)^2``.

        Every pair is summed in the same order, so identical points get identical values.
        """
        out = torch.empty(rows.numel(), dtype=torch.float64, device=self.x.device)
        src = self.x if self._raw_chunk is None else self._raw_chunk
        cols = self.cols if self._raw_chunk is None else None
        width = src.shape[1]
        step = max(1, min(256, self.cache_bytes // (8 * 4 * width)))  # a few cache-sized pieces
        for p in range(0, rows.numel(), step):
            a = src.index_select(0, rows[p : p + step])
            b = src.index_select(0, others[p : p + step])
            if cols is not None:
                a, b = a.index_select(1, cols), b.index_select(1, cols)
            diff = a.to(torch.float64)
            diff -= b
            out[p : p + step] = diff.square_().sum(1)
        return out


def _outward(values: torch.Tensor, dtype: torch.dtype, up: bool) -> torch.Tensor:
    """float64 values rounded to ``dtype`` away from the inside: down (up=False) or up."""
    r = values.to(dtype)
    if dtype == torch.float64:
        return r
    back = r.to(torch.float64)
    towards = torch.full_like(r, math.inf if up else -math.inf)
    wrong = back < values if up else back > values
    return torch.where(wrong, torch.nextafter(r, towards), r)


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


def _rows_per_block(n: int, d: int, n_queries: int, key_bytes: int, budget: int) -> int:
    """Rows per block so that the block's buffers fit ``budget`` bytes."""
    per_element = key_bytes + 2  # keys and two bool comparison masks
    if n_queries > _SORT_ABOVE:
        per_element += 16  # sorted rows (and, on GPUs, torch.sort's int64 indices)
    per_row = per_element * (n + _PAD) + 8 * d + 64 * (n_queries + 2)
    return int(max(1, min(n, budget // per_row)))


class _TooWide(Exception):
    """A float32 block whose bands are too wide to resolve pair by pair."""


@contextlib.contextmanager
def _ieee_matmul() -> Iterator[None]:
    """Full IEEE float32 GEMMs (no TF32 or bfloat16 shortcuts) for the duration of a pass."""
    precision = torch.get_float32_matmul_precision()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32 = tf32


class _Pass:
    """One blocked pass over the distances of the space ``x[:, cols]``.

    Iterating yields ``(start, stop, neighbours, ranks)`` per row block: the k nearest
    neighbours of rows start..stop-1 (if k > 0) and the ranks of the points
    ``queries[start:stop]`` (if given), both exact for the direct float64 distance D.
    """

    def __init__(
        self,
        x: torch.Tensor,
        cols: torch.Tensor | None,
        k: int,
        queries: torch.Tensor | None,
        block_rows: int | None,
        memory_budget: int,
        space: _Space | None = None,
    ) -> None:
        if block_rows is not None and block_rows < 1:
            raise ValueError(f"block_rows must be positive, got {block_rows}")
        self.x, self.cols, self.k, self.queries = x, cols, k, queries
        self.n_queries = 0 if queries is None else queries.shape[1]
        self.budget = memory_budget // 2
        # Sorting passes need every key's order, so their band must be tiny: float64 from the start.
        dtype = torch.float64 if self.n_queries > _SORT_ABOVE else torch.float32
        self.space = space if space is not None and space.dtype == dtype else _Space(x, cols, dtype, self.budget)
        d = self.space.d
        # Ranking several points per row usually meets thresholds in the bulk of the distances,
        # where many keys lie within a band: sum wide float32 GEMMs in slabs to narrow it.
        # Neighbour searches look near the smallest keys, where few keys lie.
        self.slab = _SLAB if dtype == torch.float32 and self.n_queries > 1 and d > 2 * _SLAB else d
        n = x.shape[0]
        # Room for float64 keys, or float32 keys plus a slab's product, in every pass.
        self.b = min(n, block_rows) if block_rows else _rows_per_block(n, d, self.n_queries, 8, self.budget)
        self.mask = torch.zeros(self.b, -(-n // _PAD) * _PAD, dtype=torch.bool, device=x.device)
        self.mask2 = torch.zeros_like(self.mask) if 0 < self.n_queries <= _SORT_ABOVE else None
        self.key = torch.empty(self.b, n, dtype=dtype, device=x.device)
        # The slab product's buffer is made like the keys (dtype and device), whatever torch's defaults are.
        self.scratch = self.key.new_empty(self.b, self.space.tile) if self.slab < d else None
        self.margin = self.space.margin(self.slab)

    def _narrower(self) -> None:
        """Narrower bands for the rest of the pass: float32 in slabs if not yet, else float64."""
        d = self.space.d
        if self.space.dtype == torch.float32 and self.slab == d and d > 2 * _SLAB:
            self.slab = _SLAB
            self.scratch = self.key.new_empty(self.b, self.space.tile)
            self.margin = self.space.margin(self.slab)
            return
        self.key = self.scratch = None  # free the float32 buffers before the float64 ones exist
        self.space = _Space(self.x, self.cols, torch.float64, self.budget)
        self.slab = self.space.d
        self.key = torch.empty(self.b, self.x.shape[0], dtype=torch.float64, device=self.x.device)
        self.margin = self.space.margin(self.slab)

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor | None, torch.Tensor | None]]:
        """Yields ``(start, stop, neighbours, ranks)`` per row block."""
        n = self.x.shape[0]
        with _ieee_matmul():
            for start in range(0, n, self.b):
                stop = min(start + self.b, n)
                while True:
                    try:
                        nb, rk = self._block(start, stop)
                        break
                    except _TooWide:
                        self._narrower()
                yield start, stop, nb, rk

    def _block(self, start: int, stop: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        space, m = self.space, stop - start
        blk = self.key[:m]
        space.keys(start, stop, blk, self.slab, self.scratch)
        margin = self.margin[start:stop]
        # Resolving a pair costs about as much as ~_PAIR_COST GEMM entries of a float64 block.
        limit = None if space.dtype == torch.float64 else m * space.n / _PAIR_COST
        neighbours = self._nearest(space, blk, start, margin, limit) if self.k else None
        ranks = self._ranks(space, blk, start, margin, limit) if self.queries is not None else None
        return neighbours, ranks

    # -- nearest neighbours ------------------------------------------------------------------

    def _nearest(self, space: _Space, blk: torch.Tensor, start: int, margin: torch.Tensor, limit: float | None) -> torch.Tensor:
        m, n = blk.shape
        k = self.k
        if k == 1:
            vk, first = blk.min(dim=1)
        else:
            vk = torch.topk(blk, k, dim=1, largest=False).values[:, k - 1]
        cut = _outward(vk.to(torch.float64) + 2 * margin, blk.dtype, up=True)
        hits = self.mask[:m]
        torch.le(blk, cut[:, None], out=hits[:, :n])
        counts = _count_true(hits)
        if limit is not None and float(counts.sum()) - (m if k == 1 else 0) > limit:
            raise _TooWide
        if k == 1:
            rows = torch.nonzero(counts > 1).flatten()
            out = first.clone()
            if rows.numel():
                it, col = torch.nonzero(hits[rows, :n], as_tuple=True)
                d = space.distances(start + rows[it], col)
                best = torch.full((rows.numel(),), math.inf, dtype=torch.float64, device=d.device)
                best = best.scatter_reduce(0, it, d, "amin")
                win = d == best[it]
                pick = torch.full((rows.numel(),), n, dtype=torch.int64, device=d.device)
                out[rows] = pick.scatter_reduce(0, it[win], col[win], "amin")
            return out[:, None]
        it, col = torch.nonzero(hits[:, :n], as_tuple=True)
        d = space.distances(start + it, col)
        width = int(counts.max())
        offsets = torch.cumsum(counts, 0) - counts
        pos = torch.arange(it.numel(), device=it.device) - offsets[it]
        dist = torch.full((m, width), math.inf, dtype=torch.float64, device=d.device)
        cand = torch.full((m, width), n, dtype=torch.int64, device=d.device)
        dist[it, pos] = d
        cand[it, pos] = col
        # Candidates are in increasing index within a row: a stable sort by D gives (D, index).
        order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
        return cand.gather(1, order)

    # -- ranks -------------------------------------------------------------------------------

    def _ranks(self, space: _Space, blk: torch.Tensor, start: int, margin: torch.Tensor, limit: float | None) -> torch.Tensor:
        m, n = blk.shape
        q = self.queries[start : start + m]
        kj = blk.gather(1, q).to(torch.float64)
        lo = _outward(kj - 2 * margin[:, None], blk.dtype, up=False)
        hi = _outward(kj + 2 * margin[:, None], blk.dtype, up=True)
        own = blk.gather(1, q)
        own_in = ((own >= lo) & (own < hi)).to(torch.int64)
        if self.n_queries > _SORT_ABOVE:
            ordered = _sorted_rows(blk)
            below = torch.searchsorted(ordered, lo)
            band = torch.searchsorted(ordered, hi) - below - own_in
        else:
            # One query at a time: the two masks give the counts and, by difference, the band.
            below_lo, below_hi = self.mask[:m], self.mask2[:m]
            ranks = torch.empty(m, self.n_queries, dtype=torch.int64, device=blk.device)
            pairs = 0.0
            for c in range(self.n_queries):
                torch.lt(blk, lo[:, c : c + 1], out=below_lo[:, :n])
                torch.lt(blk, hi[:, c : c + 1], out=below_hi[:, :n])
                low = _count_true(below_lo)
                band_c = _count_true(below_hi) - low - own_in[:, c]
                ranks[:, c] = low + 1
                rows = torch.nonzero(band_c > 0).flatten()
                if not rows.numel():
                    continue
                pairs += float(band_c.sum()) + rows.numel()
                if limit is not None and pairs > limit:
                    raise _TooWide
                inside = below_hi[rows, :n] ^ below_lo[rows, :n]
                j = q[rows, c]
                inside[torch.arange(rows.numel(), device=rows.device), j] = False
                it, col = torch.nonzero(inside, as_tuple=True)
                d = space.distances(start + rows[it], col)
                t = space.distances(start + rows, j)
                ranks[rows, c] += torch.bincount(it[d < t[it]], minlength=rows.numel())
            return ranks
        # Sorting passes are float64 from the start (limit None): their bands are resolved whatever their size.
        ranks = below + 1
        r, c = torch.nonzero(band > 0, as_tuple=True)
        if r.numel():
            ranks[r, c] += self._resolve(space, blk, start, r, lo[r, c], hi[r, c], q[r, c])
        return ranks

    def _resolve(
        self, space: _Space, blk: torch.Tensor, start: int, rows: torch.Tensor,
        lo: torch.Tensor, hi: torch.Tensor, j: torch.Tensor,
    ) -> torch.Tensor:
        """For each item p: #{m in the band [lo_p, hi_p) of row rows[p], m != j_p : D(i, m) < D(i, j_p)}."""
        n = blk.shape[1]
        step = max(1, self.budget // (4 * (blk.element_size() + 1) * n))
        out: list[torch.Tensor] = []
        for p in range(0, rows.numel(), step):
            r, j_p = rows[p : p + step], j[p : p + step]
            sub = blk.index_select(0, r)
            inside = (sub >= lo[p : p + step, None]) & (sub < hi[p : p + step, None])
            inside[torch.arange(r.numel(), device=r.device), j_p] = False
            it, col = torch.nonzero(inside, as_tuple=True)
            d = space.distances(start + r[it], col)
            t = space.distances(start + r, j_p)
            out.append(torch.bincount(it[d < t[it]], minlength=r.numel()))
        return torch.cat(out)
