"""Chunk sizes and seeded chunk draws."""

import numpy as np
import pytest

from mitosis_cli.analysis.chunks import default_sizes, draw_chunks, parse_sizes, sample_outside


def test_default_sizes_are_the_papers_grid() -> None:
    assert default_sizes(2048) == [2**i for i in range(12)]
    assert default_sizes(88) == [1, 2, 4, 8, 16, 32, 64, 88]
    assert default_sizes(1) == [1]


def test_parse_sizes() -> None:
    assert parse_sizes("4,1, 2") == [1, 2, 4]
    assert parse_sizes("8-64") == [8, 16, 32, 64]
    assert parse_sizes("3-10,1") == [1, 3, 4, 8, 10]
    for bad, why in (("", "no chunk size"), ("a", "not a size"), ("0", "must be positive"),
                     ("8-4", "ranges increasing"), ("1-x", "not a size")):
        with pytest.raises(ValueError, match=why):
            parse_sizes(bad)


def test_draws_are_subsets_without_replacement_and_seeded() -> None:
    chunks = draw_chunks(50, 7, 30, seed=3)
    assert chunks.shape == (30, 7) and chunks.dtype == np.int64
    assert all(len(set(row)) == 7 and row.min() >= 0 and row.max() < 50 for row in chunks)
    np.testing.assert_array_equal(chunks, draw_chunks(50, 7, 30, seed=3))
    assert not np.array_equal(chunks, draw_chunks(50, 7, 30, seed=4))
    # a prefix of the repeats is the same chunks: metrics with fewer repeats use the same first chunks
    np.testing.assert_array_equal(draw_chunks(50, 7, 10, seed=3), chunks[:10])
    with pytest.raises(ValueError, match="outside"):
        draw_chunks(5, 6, 1, seed=0)


def test_draws_are_uniform() -> None:
    chunks = draw_chunks(20, 5, 4000, seed=0)
    counts = np.bincount(chunks.ravel(), minlength=20)
    expected = 4000 * 5 / 20
    # chi-square with 19 dof: 0.999 quantile ~ 43.8
    assert ((counts - expected) ** 2 / expected).sum() < 43.8


def test_sample_outside() -> None:
    chunk = np.array([0, 5, 9])
    picked = sample_outside(30, chunk, 10, seed=1)
    assert len(picked) == 10 and not set(picked) & set(chunk) and np.all(np.diff(picked) > 0)
    np.testing.assert_array_equal(sample_outside(12, chunk, 100, seed=1), np.setdiff1d(np.arange(12), chunk))


def test_tied_uniforms_are_taken_in_index_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """A generator whose uniforms tie: the chunk is the first `size` neurons of the stable order, so the draw
    does not depend on which sort numpy dispatches to on the machine."""
    uniforms = np.random.default_rng(0).integers(0, 3, (4, 60)) / 4.0

    class Ties:
        def random(self, shape: tuple[int, int]) -> np.ndarray:
            assert shape == uniforms.shape
            return uniforms.copy()

    monkeypatch.setattr(np.random, "default_rng", lambda seed: Ties())
    for size in (5, 25, 45):
        want = [sorted(sorted(range(60), key=lambda i, row=row: (row[i], i))[:size]) for row in uniforms]
        np.testing.assert_array_equal(draw_chunks(60, size, 4, seed=0), want)
