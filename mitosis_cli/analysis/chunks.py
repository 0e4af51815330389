"""Chunks: random subsets of the last hidden layer's neurons (Doimo et al. 2022, "chunks" of w_c neurons)."""

from __future__ import annotations

import numpy as np


def default_sizes(width: int) -> list[int]:
    """The paper's grid of chunk sizes: powers of two below W, and W itself.

    Parameters
    ----------
    width : int
        Width W of the layer.

    Returns
    -------
    list of int
        ``[1, 2, 4, ..., W]`` (W is included even when it is not a power of two).
    """
    if width < 1:
        raise ValueError(f"width must be positive, got {width}")
    sizes = [1 << i for i in range(width.bit_length()) if (1 << i) < width]
    return [*sizes, width]


def parse_sizes(text: str) -> list[int]:
    """Parse a comma-separated list of chunk sizes (``"1,2,4"`` or ``"8-64"`` for the powers of two 8..64).

    Raises
    ------
    ValueError
        When an entry is not a positive integer or a range ``a-b`` with a <= b.
    """
    sizes: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not (lo.isdigit() and (not sep or hi.isdigit())):
            raise ValueError(f"{part!r} is not a size or a range like 8-64")
        a, b = int(lo), int(hi) if sep else int(lo)
        if a < 1 or b < a:
            raise ValueError(f"{part!r}: sizes must be positive and ranges increasing")
        if sep:  # a range means the powers of two in [a, b], plus its ends
            sizes.update({a, b}, {1 << i for i in range(b.bit_length()) if a <= (1 << i) <= b})
        else:
            sizes.add(a)
    if not sizes:
        raise ValueError("no chunk size given")
    return sorted(sizes)


def draw_chunks(width: int, size: int, repeats: int, seed: int) -> np.ndarray:
    """Draw `repeats` chunks of `size` neuron indices, each uniformly without replacement.

    The draw depends only on (seed, width, size), so repeat r is the same chunk for every metric that
    uses at least r + 1 repeats, and the same command gives the same chunks.

    Parameters
    ----------
    width : int
        Number of neurons W.
    size : int
        Chunk size w_c, 1 <= w_c <= W.
    repeats : int
        Number of chunks.
    seed : int
        Seed of ``np.random.default_rng``.

    Returns
    -------
    ndarray of int64, shape (repeats, size)
        Row r holds the indices of chunk r, sorted ascending.
    """
    if not 1 <= size <= width:
        raise ValueError(f"chunk size {size} is outside [1, W={width}]")
    rng = np.random.default_rng([seed, width, size])
    # argsort of iid uniforms is a uniform random permutation; its first `size` entries a uniform subset
    order = np.argsort(rng.random((repeats, width)), axis=1, kind="stable")[:, :size]
    return np.sort(order, axis=1).astype(np.int64)


def sample_outside(width: int, chunk: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Up to `count` neurons outside `chunk`, drawn uniformly without replacement (seeded), sorted.

    Used to pick the target neurons of the residual diagnostics, whose cost grows with their number.
    """
    outside = np.setdiff1d(np.arange(width), chunk)
    if outside.size <= count:
        return outside
    rng = np.random.default_rng([seed, width, int(np.asarray(chunk).size), 1])
    return np.sort(rng.choice(outside, size=count, replace=False))
