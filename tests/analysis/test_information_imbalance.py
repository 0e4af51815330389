"""Information Imbalance: exact against a brute-force reference, tie rules, properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.neighbors import NearestNeighbors

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
    for (to_full, from_full), chunk in zip(got, chunks):
        assert to_full == pytest.approx(_ref_imbalance(x[:, chunk], x, 3), abs=1e-12)
        assert from_full == pytest.approx(_ref_imbalance(x, x[:, chunk], 3), abs=1e-12)


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


def test_no_chunks() -> None:
    assert chunk_information_imbalances(np.zeros((5, 3)), []).shape == (0, 2)


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(9)
    x = _with_ties(rng, 300, 16)
    chunks = [rng.choice(16, s, replace=False) for s in (1, 4, 16)] * 15
    np.testing.assert_array_equal(
        chunk_information_imbalances(x, chunks, k=2, device="cuda"), chunk_information_imbalances(x, chunks, k=2)
    )
    np.testing.assert_array_equal(nearest_neighbours(x, 3, device="cuda"), nearest_neighbours(x, 3))
