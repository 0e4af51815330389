"""Information Imbalance: exact against a brute-force reference, tie rules, properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.neighbors import NearestNeighbors

from mitosis_cli.analysis import blocked_ranks as br
from mitosis_cli.analysis.information_imbalance import (
    chunk_information_imbalances,
    information_imbalance,
    nearest_neighbours,
    neighbour_ranks,
)

# ---------------------------------------------------------------------------------------------
# Independent reference: the full N x N distance matrix from explicit differences, and loops.


def _distances(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def _ref_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    d = _distances(x)
    n = len(x)
    rows = []
    for i in range(n):
        order = np.lexsort((np.arange(n), d[i]))  # by distance, then by index
        rows.append(order[order != i][:k])
    return np.array(rows)


def _ref_ranks(x: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    d = _distances(x)
    n = len(x)
    ranks = np.zeros(neighbours.shape, dtype=np.int64)
    for i in range(n):
        others = np.arange(n) != i
        for q, j in enumerate(neighbours[i]):
            ranks[i, q] = 1 + np.count_nonzero(d[i, others] < d[i, j])
    return ranks


def _ref_imbalance(x_a: np.ndarray, x_b: np.ndarray, k: int) -> float:
    return 2.0 / len(x_a) * _ref_ranks(x_b, _ref_neighbours(x_a, k)).mean()


def _with_ties(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Few-valued points (many equal distances) with some exact duplicates."""
    x = rng.integers(0, 3, size=(n, d)).astype(np.float32)
    x[rng.choice(n, n // 5, replace=False)] = x[rng.choice(n, n // 5, replace=False)]
    return x


# ---------------------------------------------------------------------------------------------
# Neighbours and ranks


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("block_rows", [None, 1, 7])
def test_neighbours_follow_the_tie_rule(k: int, block_rows: int | None) -> None:
    x = _with_ties(np.random.default_rng(k), 90, 3)
    got = nearest_neighbours(x, k, block_rows=block_rows)
    np.testing.assert_array_equal(got, _ref_neighbours(x, k))


def test_neighbours_match_scikit_learn_without_ties() -> None:
    x = np.random.default_rng(1).normal(size=(200, 16))
    _, expected = NearestNeighbors(n_neighbors=6).fit(x).kneighbors(x)
    np.testing.assert_array_equal(nearest_neighbours(x, 5), expected[:, 1:])


def test_column_tiles_give_the_same_answer() -> None:
    # A budget far below N x D x 8 bytes forces several column tiles and small row blocks.
    x = _with_ties(np.random.default_rng(2), 120, 5)
    nb = _ref_neighbours(x, 4)
    small = 120 * 5 * 8 // 3
    np.testing.assert_array_equal(nearest_neighbours(x, 4, memory_budget=small), nb)
    np.testing.assert_array_equal(neighbour_ranks(x, nb, memory_budget=small), _ref_ranks(x, nb))


@pytest.mark.parametrize("q", [1, 5, 60])  # few: one comparison per column; many: sorted rows
def test_ranks_are_exact_with_ties(q: int) -> None:
    rng = np.random.default_rng(q)
    x = _with_ties(rng, 101, 2)
    others = np.array([rng.permutation(np.delete(np.arange(101), i))[:q] for i in range(101)])
    np.testing.assert_array_equal(neighbour_ranks(x, others, block_rows=16), _ref_ranks(x, others))


def test_duplicates_share_the_lowest_rank() -> None:
    x = np.array([[0.0], [1.0], [1.0], [1.0], [5.0]])
    # Around point 0, points 1, 2, 3 are equidistant: rank 1 each, and point 4 comes next at 4.
    ranks = neighbour_ranks(x, np.array([[1, 2, 3, 4]] + [[0, 0, 0, 0]] * 4))
    np.testing.assert_array_equal(ranks[0], [1, 1, 1, 4])
    # Point 2's nearest neighbour is its duplicate with the lowest index.
    np.testing.assert_array_equal(nearest_neighbours(x, 2)[2], [1, 3])


# ---------------------------------------------------------------------------------------------
# Information Imbalance


@pytest.mark.parametrize("k", [1, 2, 5])
def test_imbalance_matches_the_reference_with_duplicates(k: int) -> None:
    rng = np.random.default_rng(10 + k)
    x = _with_ties(rng, 80, 4)
    x_b = np.concatenate([x[:, :2], rng.integers(0, 2, size=(80, 1))], axis=1)
    assert information_imbalance(x, x_b, k) == pytest.approx(_ref_imbalance(x, x_b, k), abs=1e-12)
    assert information_imbalance(x_b, x, k, block_rows=9) == pytest.approx(_ref_imbalance(x_b, x, k), abs=1e-12)


@pytest.mark.parametrize("k", [1, 4])
def test_self_imbalance_is_the_minimum(k: int) -> None:
    x = np.random.default_rng(3).normal(size=(150, 8))
    assert information_imbalance(x, x, k) == pytest.approx((k + 1) / 150)


def test_independent_spaces_are_near_one() -> None:
    rng = np.random.default_rng(4)
    x_a, x_b = rng.normal(size=(600, 5)), rng.normal(size=(600, 5))
    assert information_imbalance(x_a, x_b, 1) == pytest.approx(1.0, abs=0.1)
    assert information_imbalance(x_b, x_a, 3) == pytest.approx(1.0, abs=0.1)


def test_a_subset_is_informative_one_way() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 6))
    part = x[:, :2]
    to_part, from_part = information_imbalance(x, part), information_imbalance(part, x)
    assert to_part < from_part < 1.0
    assert to_part < 0.3


def test_float32_and_float64_inputs_agree() -> None:
    x = np.random.default_rng(6).normal(size=(120, 10)).astype(np.float32)
    y = x[:, :3]
    assert information_imbalance(x, y, 2) == information_imbalance(x.astype(np.float64), y.astype(np.float64), 2)


# ---------------------------------------------------------------------------------------------
# Many chunks of one full space


@pytest.mark.parametrize("repeats", [1, 12])  # 12 chunks x k=3 > 32 neighbours per row: sorted rows
def test_chunks_match_pairwise_imbalances(repeats: int) -> None:
    rng = np.random.default_rng(7)
    x = _with_ties(rng, 70, 12)
    chunks = [rng.choice(12, size, replace=False) for size in (1, 3, 12)] * repeats
    got = chunk_information_imbalances(x, chunks, k=3, block_rows=16)
    assert got.shape == (len(chunks), 2)
    for (to_full, from_full), chunk in zip(got, chunks, strict=True):
        assert to_full == pytest.approx(_ref_imbalance(x[:, chunk], x, 3), abs=1e-12)
        assert from_full == pytest.approx(_ref_imbalance(x, x[:, chunk], 3), abs=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_repeated_and_full_width_chunks(k: int) -> None:
    # Repeated chunks are computed once and a chunk of all columns in order is the full space
    # itself: both shortcuts must give the reference values, ties included.
    rng = np.random.default_rng(12 + k)
    x = _with_ties(rng, 60, 6)
    everything, pair = np.arange(6), np.array([1, 4])
    chunks = [everything, pair, everything[::-1].copy(), pair, everything, np.array([2])]
    got = chunk_information_imbalances(x, chunks, k=k, block_rows=13)
    for (to_full, from_full), chunk in zip(got, chunks, strict=True):
        assert to_full == pytest.approx(_ref_imbalance(x[:, chunk], x, k), abs=1e-12)
        assert from_full == pytest.approx(_ref_imbalance(x, x[:, chunk], k), abs=1e-12)
    np.testing.assert_array_equal(got[0], got[4])
    np.testing.assert_array_equal(got[1], got[3])


def test_chunk_with_planted_clones() -> None:
    # Four copies (plus small noise) of an 8-dimensional signal: a chunk holding one whole copy
    # reproduces the layer's neighbourhoods; a single neuron does not.
    rng = np.random.default_rng(8)
    signal = rng.normal(size=(400, 8))
    x = np.concatenate([signal + 0.01 * rng.normal(size=signal.shape) for _ in range(4)], axis=1)
    clone, neuron = np.arange(8, 16), np.array([3])
    (c_to, c_from), (n_to, n_from) = chunk_information_imbalances(x, [clone, neuron])
    assert c_to < 0.05 and c_from < 0.05
    assert n_to > 0.3 and n_from < n_to


def test_chunks_without_a_copy_of_their_columns() -> None:
    # A budget too small to keep each chunk's columns apart: the exact distances select the chunk's
    # columns from the full points, pair by pair, and must still be the chunk's own distances.
    rng = np.random.default_rng(15)
    x = _with_ties(rng, 40, 6)
    chunks = [np.array([4, 1]), np.array([0, 2, 5])]
    got = chunk_information_imbalances(x, chunks, k=2, memory_budget=1024)
    for (to_full, from_full), chunk in zip(got, chunks, strict=True):
        assert to_full == pytest.approx(_ref_imbalance(x[:, chunk], x, 2), abs=1e-12)
        assert from_full == pytest.approx(_ref_imbalance(x, x[:, chunk], 2), abs=1e-12)


def test_no_chunks() -> None:
    assert chunk_information_imbalances(np.zeros((5, 3)), []).shape == (0, 2)


# ---------------------------------------------------------------------------------------------
# The float32 filter: data whose float32 GEMM keys collide or swap must still give the float64
# answer (every comparison inside the proven error band is redone with the direct distance).


def _check_against_reference(x: np.ndarray, k: int, rng: np.random.Generator, **kw) -> None:
    n = len(x)
    np.testing.assert_array_equal(nearest_neighbours(x, k, **kw), _ref_neighbours(x, k))
    for q in (1, 40):  # few queries: comparison passes (float32 filter); many: sorted rows (float64)
        others = np.array([rng.permutation(np.delete(np.arange(n), i))[:q] for i in range(n)])
        np.testing.assert_array_equal(neighbour_ranks(x, others, **kw), _ref_ranks(x, others))


def _shell(rng: np.random.Generator, n: int, d: int, rel: float) -> np.ndarray:
    """Point 0 at the origin, the others at squared distances 1 + m * rel from it, in shuffled
    order: float32 (resolution ~6e-8) cannot order them when rel ~ 1e-9, float64 can."""
    v = rng.normal(size=(n - 1, d))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    radii = np.sqrt(1 + rng.permutation(n - 1) * rel)
    return np.concatenate([np.zeros((1, d)), v * radii[:, None]])


@pytest.mark.parametrize("d", [3, 40])
def test_distances_closer_than_float32_resolution(d: int) -> None:
    rng = np.random.default_rng(20 + d)
    x = _shell(rng, 60, d, 1e-9)
    # Around point 0 the order of the other points is set by differences of 1e-9 alone.
    order = np.argsort(((x - x[0]) ** 2).sum(1)[1:]) + 1
    np.testing.assert_array_equal(nearest_neighbours(x, 59)[0], order)
    ranks = neighbour_ranks(x, np.array([order[::-1]] + [[0] * 59] * 59))[0]
    np.testing.assert_array_equal(ranks, np.arange(59, 0, -1))
    _check_against_reference(x, 3, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_offset_tiny_differences(dtype: type) -> None:
    # 1e4 + multiples of 2^-10: exact in float32 and float64, but ||x||^2 ~ 1e8 d hides the
    # differences (~1e-6) from float32 GEMM keys unless the points are centred.
    rng = np.random.default_rng(30)
    x = (1e4 + rng.integers(0, 4, size=(70, 3)) / 1024).astype(dtype)
    _check_against_reference(x, 2, rng)
    assert information_imbalance(x, x[:, :1], 2) == pytest.approx(_ref_imbalance(x, x[:, :1], 2), abs=1e-12)


def test_two_far_clusters_defeat_float32_and_float64_keys() -> None:
    # Clusters at +-2^26 (centring cannot help: the mean is ~0) with differences of 2^-20:
    # squared norms ~2^52 d, so even float64 GEMM keys (resolution ~d) cannot see squared
    # distances of ~2^-40; only the direct differences can, and the result must match them.
    rng = np.random.default_rng(31)
    n = 64
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)[:, None]
    x = sign * 2.0**26 + rng.integers(0, 4, size=(n, 2)) * 2.0**-20
    _check_against_reference(x, 3, rng)
    chunks = [np.array([0]), np.array([1]), np.array([0, 1])]
    got = chunk_information_imbalances(x, chunks, k=2, block_rows=16)
    for (to_full, from_full), chunk in zip(got, chunks, strict=True):
        assert to_full == pytest.approx(_ref_imbalance(x[:, chunk], x, 2), abs=1e-12)
        assert from_full == pytest.approx(_ref_imbalance(x, x[:, chunk], 2), abs=1e-12)


def test_a_single_near_tie_in_a_float64_band_is_rechecked() -> None:
    # Two clusters at +-2^26 (no centring: the mean is 0), so float64 keys err by a few units; points
    # 1000 apart, each with a twin 2^-20 further out. Around a point, the twin and its base differ in D
    # by ~0.01, far below that error and far from every other key: each band holds one other key, which
    # only D can order (rank of the twin = rank of its base + 1). Sorted rows (Q > 32) and the
    # comparison loop (Q <= 32) both.
    rng = np.random.default_rng(35)
    base = np.concatenate([2.0**26 + 1000.0 * np.arange(20), -(2.0**26) - 1000.0 * np.arange(20)])
    x = np.concatenate([base, base + np.sign(base) * 2.0**-20])[:, None]
    n = len(x)
    for q in (n - 1, 32):
        others = np.array([rng.permutation(np.delete(np.arange(n), i))[:q] for i in range(n)])
        np.testing.assert_array_equal(neighbour_ranks(x, others, block_rows=16), _ref_ranks(x, others))


@pytest.mark.parametrize("scale", [2.0**-100, 2.0**100])
def test_values_that_would_underflow_or_overflow_float32(scale: float) -> None:
    # Powers of two keep the ties of the few-valued points exact in float64.
    rng = np.random.default_rng(32)
    x = _with_ties(rng, 50, 3).astype(np.float64) * scale
    x[:5] += rng.normal(size=(5, 3)) * scale
    _check_against_reference(x, 2, rng)


@pytest.mark.parametrize(("slab", "pair_cost"), [(4, 1e-9), (4, 1e9), (10**6, 1e9)])
def test_slabs_and_float64_fallback(monkeypatch: pytest.MonkeyPatch, slab: int, pair_cost: float) -> None:
    # Slabs of 4 features exercise the slab-summed GEMM; a tiny pair cost never falls back to
    # float64, a huge one falls back at the first pair to resolve.
    monkeypatch.setattr(br, "_SLAB", slab)
    monkeypatch.setattr(br, "_PAIR_COST", pair_cost)
    rng = np.random.default_rng(33)
    x = _with_ties(rng, 70, 12)
    _check_against_reference(x, 3, rng, block_rows=16)
    x = _shell(rng, 50, 12, 1e-9)
    _check_against_reference(x, 2, rng, block_rows=7)
    chunks = [rng.choice(12, size, replace=False) for size in (1, 3, 12)]
    got = chunk_information_imbalances(x, chunks, k=2, block_rows=9)
    for (to_full, from_full), chunk in zip(got, chunks, strict=True):
        assert to_full == pytest.approx(_ref_imbalance(x[:, chunk], x, 2), abs=1e-12)
        assert from_full == pytest.approx(_ref_imbalance(x, x[:, chunk], 2), abs=1e-12)


def test_margin_bounds_the_float32_key_error() -> None:
    # The proven bound, checked directly: |K(i, m) + ||z_i||^2 - D(i, m)| <= M_i for all pairs.
    rng = np.random.default_rng(34)
    x = rng.normal(size=(300, 700)) + 3.0
    xt = torch.from_numpy(x)
    for slab in (700, 64):
        space = br._Space(xt, None, torch.float32, 2**30)
        key = torch.empty(300, 300)
        space.keys(0, 300, key, slab, torch.empty(300, 300))
        z = space.get(0, 300).double()
        d = torch.cdist(xt, xt, compute_mode="donot_use_mm_for_euclid_dist") ** 2 * space.scale**2
        err = (key.double() + (z**2).sum(1, keepdim=True) - d).abs()
        err.fill_diagonal_(0)
        margin = space.margin(slab)
        assert (err <= margin[:, None]).all()
        assert float((err / margin[:, None]).max()) < 0.5  # the bound is not vacuous either


# ---------------------------------------------------------------------------------------------
# Property test: any few-valued data, any k and block size


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 30),
    d=st.integers(1, 3),
    levels=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    block_rows=st.one_of(st.none(), st.integers(1, 8)),
    data=st.data(),
)
def test_property_matches_reference(n, d, levels, seed, block_rows, data) -> None:
    rng = np.random.default_rng(seed)
    x_a = rng.integers(0, levels, size=(n, d)).astype(np.float64)
    x_b = rng.integers(0, levels + 1, size=(n, d + 1)).astype(np.float32)
    k = data.draw(st.integers(1, n - 1))
    np.testing.assert_array_equal(nearest_neighbours(x_a, k, block_rows=block_rows), _ref_neighbours(x_a, k))
    got = information_imbalance(x_a, x_b, k, block_rows=block_rows)
    assert got == pytest.approx(_ref_imbalance(x_a, x_b, k), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Bad input and devices


def test_bad_input_raises() -> None:
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="k must be"):
        information_imbalance(x, x, k=10)
    with pytest.raises(ValueError, match="same points"):
        information_imbalance(x, x[:5])
    with pytest.raises(ValueError, match="NaN"):
        information_imbalance(np.full((10, 2), np.nan), x)
    with pytest.raises(ValueError, match="2-D"):
        information_imbalance(np.zeros(10), x)
    with pytest.raises(ValueError, match="outside"):
        chunk_information_imbalances(x, [np.array([0, 2])])
    with pytest.raises(ValueError, match="non-empty"):
        chunk_information_imbalances(x, [np.array([], dtype=int)])
    with pytest.raises(ValueError, match="itself"):
        neighbour_ranks(x, np.arange(10)[:, None])
    with pytest.raises(ValueError, match="block_rows"):
        nearest_neighbours(x, block_rows=0)
    # The message names the argument at fault.
    with pytest.raises(ValueError, match=r"^x must be a 2-D"):
        nearest_neighbours(np.zeros(10))
    with pytest.raises(ValueError, match=r"^x_a must be a 2-D"):
        information_imbalance(np.zeros(10), x)
    with pytest.raises(ValueError, match=r"^x_full holds NaN"):
        chunk_information_imbalances(np.full((10, 2), np.inf), [np.array([0])])
    # Neighbours must be integers, one row per point (here valid indices otherwise).
    others = (np.arange(10)[:, None] + 1) % 10
    with pytest.raises(ValueError, match="integer array of shape"):
        neighbour_ranks(x, others.astype(np.float64))
    with pytest.raises(ValueError, match="integer array of shape"):
        neighbour_ranks(x, others[:5])


@pytest.fixture
def foreign_torch_defaults():
    """torch's default device set to "meta" (tensors without storage) and its default dtype to float64."""
    device, dtype = torch.get_default_device(), torch.get_default_dtype()
    torch.set_default_device("meta")
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_device(device)
        torch.set_default_dtype(dtype)


@pytest.mark.usefixtures("foreign_torch_defaults")
@pytest.mark.filterwarnings("error")
def test_every_buffer_follows_the_input_not_torchs_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every buffer must live on the input's device with the dtype the pass chose: a buffer left to
    # torch's defaults lands on "meta" (or, on a GPU run, on the wrong device) and the pass fails.
    # A float64 default dtype is common in scientific code: the slab product's buffer once took it.
    # Slabs of 4 features and a huge pair cost: every float32 pass goes to slabs, then to float64.
    # No warning either (an out= buffer of the wrong shape, resized by torch, warns).
    monkeypatch.setattr(br, "_SLAB", 4)
    monkeypatch.setattr(br, "_PAIR_COST", 1e9)
    rng = np.random.default_rng(16)
    x = _with_ties(rng, 40, 12)
    _check_against_reference(x, 2, rng, block_rows=7)
    chunks = [np.array([3, 7]), np.arange(12)]
    got = chunk_information_imbalances(x, chunks, k=2, block_rows=9)
    for (to_full, from_full), chunk in zip(got, chunks, strict=True):
        assert to_full == pytest.approx(_ref_imbalance(x[:, chunk], x, 2), abs=1e-12)
        assert from_full == pytest.approx(_ref_imbalance(x, x[:, chunk], 2), abs=1e-12)
    monkeypatch.setattr(br, "_PAIR_COST", 1e-9)  # float32 slab passes kept to the end
    _check_against_reference(x, 3, rng, block_rows=7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(9)
    x = _with_ties(rng, 300, 16)
    chunks = [rng.choice(16, s, replace=False) for s in (1, 4, 16)] * 15
    np.testing.assert_array_equal(
        chunk_information_imbalances(x, chunks, k=2, device="cuda"), chunk_information_imbalances(x, chunks, k=2)
    )
    np.testing.assert_array_equal(nearest_neighbours(x, 3, device="cuda"), nearest_neighbours(x, 3))


def test_float64_input_is_not_changed_and_ties_follow_the_index() -> None:
    # Found by the property test: centring a float64 input in place changed the caller's array, and the exact
    # distances were then taken on the centred copy, whose rounding broke a tie at the k-th neighbour.
    rng = np.random.default_rng(144)
    x = rng.integers(0, 3, size=(26, 3)).astype(np.float64)
    before = x.copy()
    got = nearest_neighbours(x, 5)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(got, _ref_neighbours(before, 5))
    assert information_imbalance(x, x[:, :2], 2) == pytest.approx(_ref_imbalance(before, before[:, :2], 2), abs=1e-12)
    np.testing.assert_array_equal(x, before)
