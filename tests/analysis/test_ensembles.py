"""Ensembles of networks and of chunks: each function against a plain-Python computation of its formula."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mitosis_cli.analysis import ensembles as ens

# 3 members x 5 samples x 3 classes, quarter-integers (exact in float32), and the labels.
LOGITS = np.array([
    [[2.0, 0.5, -1.0], [0.0, 1.0, 0.25], [-0.5, -0.5, 3.0], [1.0, 1.0, 0.0], [0.75, -2.0, 0.5]],
    [[0.5, 1.5, 0.0], [1.25, 0.0, -1.0], [0.0, 2.0, 1.0], [-1.0, 0.5, 0.25], [2.0, 0.0, 0.0]],
    [[1.0, 0.0, 0.5], [0.0, 0.0, 2.0], [0.25, -1.0, 1.5], [0.5, 2.0, -0.5], [-1.0, 1.0, 0.5]],
])
LABELS = np.array([0, 1, 2, 1, 0])


def softmax_row(z: list[float]) -> list[float]:
    exps = [math.exp(v) for v in z]
    return [e / sum(exps) for e in exps]


def metrics_by_hand(probs: list[list[float]], labels: list[int]) -> dict[str, float]:
    hits = [max(range(len(p)), key=lambda c: (p[c], -c)) == y for p, y in zip(probs, labels, strict=True)]
    accuracy = sum(hits) / len(hits)
    ce = -sum(math.log(p[y]) for p, y in zip(probs, labels, strict=True)) / len(labels)
    return {"accuracy": accuracy, "error": 1 - accuracy, "cross_entropy": ce}


def ensemble_by_hand(members: list[int], combine: str) -> list[list[float]]:
    out = []
    for n in range(LOGITS.shape[1]):
        if combine == "logits":
            out.append(softmax_row([sum(LOGITS[k, n, c] for k in members) for c in range(3)]))
        else:
            probs = [softmax_row(list(LOGITS[k, n])) for k in members]
            out.append([sum(p[c] for p in probs) / len(members) for c in range(3)])
    return out


@pytest.mark.parametrize("combine", ens.COMBINES)
@pytest.mark.parametrize("members", [[0], [0, 2], [0, 1, 2]])
def test_combined_metrics_match_hand_computation(combine: str, members: list[int]) -> None:
    got = ens.classification_metrics(ens.combine_members(LOGITS[members], combine), LABELS)
    want = metrics_by_hand(ensemble_by_hand(members, combine), list(LABELS))
    assert got == pytest.approx(want, rel=1e-12)


def test_summed_logits_by_hand() -> None:
    # members 0+1 summed: sample 0 -> [2.5, 2, -1] (class 0, right), sample 1 -> [1.25, 1, -0.75] (class 0, wrong),
    # sample 2 -> [-0.5, 1.5, 4] (right), sample 3 -> [0, 1.5, 0.25] (right), sample 4 -> [2.75, -2, 0.5] (right)
    got = ens.classification_metrics(ens.combine_members(LOGITS[[0, 1]], "logits"), LABELS)
    assert got["accuracy"] == pytest.approx(0.8) and got["error"] == pytest.approx(0.2)


def test_probability_average_does_not_underflow() -> None:
    logits = np.array([[[0.0, 2000.0]], [[0.0, 2000.0]]])  # p(class 0) = e^-2000: zero in float64
    log_p = ens.combine_members(logits, "probs")
    assert ens.classification_metrics(log_p, np.array([0]))["cross_entropy"] == pytest.approx(2000.0)


def test_bad_combine_is_refused() -> None:
    with pytest.raises(ValueError, match="combine"):
        ens.combine_members(LOGITS, "median")


@pytest.mark.parametrize("pool, sizes, want", [
    (1, None, [1]), (4, None, [1, 2, 4]), (5, None, [1, 2, 4, 5]), (12, None, [1, 2, 4, 8, 12]),
    (5, [3, 1, 3, 9], [1, 3]),
])
def test_ensemble_sizes(pool: int, sizes: list[int] | None, want: list[int]) -> None:
    assert ens.ensemble_sizes(pool, sizes) == want


def test_draw_subsets_enumerates_small_pools() -> None:
    subsets = ens.draw_subsets(4, 2, repeats=10, rng=np.random.default_rng(0))
    assert sorted(map(tuple, subsets.tolist())) == list(itertools.combinations(range(4), 2))


def test_draw_subsets_draws_without_replacement_reproducibly() -> None:
    first = ens.draw_subsets(20, 5, repeats=30, rng=np.random.default_rng(7))
    again = ens.draw_subsets(20, 5, repeats=30, rng=np.random.default_rng(7))
    assert first.shape == (30, 5)
    np.testing.assert_array_equal(first, again)
    assert all(len(set(row)) == 5 and list(row) == sorted(row) for row in first.tolist())
    assert len({tuple(row) for row in first.tolist()}) > 25  # C(20, 5) = 15504: draws rarely coincide


def test_ensemble_curve_scores_the_same_subsets_on_each_split() -> None:
    pool = {"train": LOGITS, "test": LOGITS[:, ::-1]}
    labels = {"train": LABELS, "test": LABELS[::-1]}  # the same samples reversed: identical metrics
    curve = ens.ensemble_curve(pool, labels, [1, 2, 3], repeats=10, rng=np.random.default_rng(0), combine="probs")
    want = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0)]
    assert [(m.members, m.repeat) for m in curve if m.split == "test"] == want
    by_key = {(m.members, m.repeat, m.split): m.values for m in curve}
    for (members, repeat, _split), values in by_key.items():
        assert values == pytest.approx(by_key[(members, repeat, "train")])
    subsets = list(itertools.combinations(range(3), 2))
    for repeat, subset in enumerate(subsets):
        want = metrics_by_hand(ensemble_by_hand(list(subset), "probs"), list(LABELS))
        assert by_key[(2, repeat, "train")] == pytest.approx(want)


def test_random_partition_is_disjoint() -> None:
    part = ens.random_partition(10, 3, np.random.default_rng(1))
    assert part.shape == (3, 3) and len(set(part.ravel().tolist())) == 9 and part.max() < 10


def test_chunk_logits_by_hand() -> None:
    rng = np.random.default_rng(0)
    x, a, b = rng.standard_normal((4, 6)), rng.standard_normal((3, 6)), rng.standard_normal(3)
    chunks = np.array([[5, 0], [2, 3]])
    got = ens.chunk_logits(x, a, b, chunks)
    for j, chunk in enumerate(chunks):
        for n in range(4):
            for c in range(3):
                want = sum(x[n, i] * a[c, i] for i in chunk) + b[c]
                assert got[j, n, c] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("combine", ens.COMBINES)
def test_chunk_ensemble_matches_combining_chunk_logits(combine: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 12)).astype(np.float32)
    a, b = rng.standard_normal((4, 12)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    labels = rng.integers(0, 4, 50)
    partition = ens.random_partition(12, 2, rng)
    got = ens.chunk_ensemble_metrics(x, a, b, labels, partition, [1, 2, 6], combine)
    logits = ens.chunk_logits(x, a, b, partition)
    for count in (1, 2, 6):
        want = ens.classification_metrics(ens.combine_members(logits[:count], combine), labels)
        assert got[count] == pytest.approx(want, rel=1e-9)
    if combine == "logits":  # all chunks summed: the whole layer read out, with the bias counted once per chunk
        x64, a64, b64 = x.astype(np.float64), a.astype(np.float64), b.astype(np.float64)
        full = ens.classification_metrics(ens.log_softmax(x64 @ a64.T + 6 * b64), labels)
        assert got[6] == pytest.approx(full, rel=1e-9)


def test_chunk_probability_average_in_small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    x, a, b = rng.standard_normal((20, 8)), rng.standard_normal((3, 8)), np.zeros(3)
    labels = rng.integers(0, 3, 20)
    partition = ens.random_partition(8, 1, rng)
    whole = ens.chunk_ensemble_metrics(x, a, b, labels, partition, [8], "probs")
    monkeypatch.setattr(ens, "_BLOCK_FLOATS", 1)  # one chunk at a time
    assert ens.chunk_ensemble_metrics(x, a, b, labels, partition, [8], "probs")[8] == pytest.approx(whole[8], rel=1e-12)


def bias_variance_by_hand(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    members, samples, classes = logits.shape
    loss = bias = variance = 0.0
    for n in range(samples):
        probs = [softmax_row(list(logits[k, n])) for k in range(members)]
        geo = [math.prod(p[c] for p in probs) ** (1 / members) for c in range(classes)]
        q = [g / sum(geo) for g in geo]
        loss += sum(-math.log(p[labels[n]]) for p in probs) / members
        bias += -math.log(q[labels[n]])
        variance += sum(sum(q[c] * math.log(q[c] / p[c]) for c in range(classes)) for p in probs) / members
    return {"loss": loss / samples, "bias": bias / samples, "variance": variance / samples}


def test_bias_variance_matches_hand_computation() -> None:
    got = ens.bias_variance(LOGITS, LABELS)
    assert got == pytest.approx(bias_variance_by_hand(LOGITS, LABELS), rel=1e-12)
    assert got["loss"] == pytest.approx(got["bias"] + got["variance"], rel=1e-12)


def test_identical_members_have_no_variance() -> None:
    same = np.repeat(LOGITS[:1], 4, axis=0)
    got = ens.bias_variance(same, LABELS)
    assert got["variance"] == pytest.approx(0.0, abs=1e-12) and got["bias"] == pytest.approx(got["loss"])


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (3, 4, 5), elements=st.floats(-20, 20)), st.lists(st.integers(0, 4), min_size=4, max_size=4))
def test_bias_plus_variance_is_the_loss(logits: np.ndarray, labels: list[int]) -> None:
    got = ens.bias_variance(logits, np.array(labels))
    assert got["variance"] >= -1e-12
    assert got["loss"] == pytest.approx(got["bias"] + got["variance"], rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("wide, member, want", [(1000, 100, 10), (1000, 300, 3), (1000, 2000, 1), (55050, 6442, 9)])
def test_same_params_members(wide: float, member: float, want: int) -> None:
    assert ens.same_params_members(wide, member) == want


def test_probability_average_keeps_each_block_of_chunk_logits_within_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """More classes than neurons (C = 10, W = 4): a block holds at most _BLOCK_FLOATS logits of the chunks."""
    rng = np.random.default_rng(5)
    x, a, b = rng.standard_normal((6, 4)), rng.standard_normal((10, 4)), rng.standard_normal(10)
    labels = rng.integers(0, 10, 6)
    partition = np.arange(4)[:, None]
    want = ens.classification_metrics(ens.combine_members(ens.chunk_logits(x, a, b, partition), "probs"), labels)
    monkeypatch.setattr(ens, "_BLOCK_FLOATS", 2 * 6 * 10)  # two chunks' logits
    blocks: list[int] = []
    real = ens.chunk_logits

    def recorded(features: np.ndarray, weight: np.ndarray, bias: np.ndarray, chunks: np.ndarray) -> np.ndarray:
        blocks.append(len(chunks))
        return real(features, weight, bias, chunks)

    monkeypatch.setattr(ens, "chunk_logits", recorded)
    assert ens.chunk_ensemble_metrics(x, a, b, labels, partition, [4], "probs")[4] == pytest.approx(want, rel=1e-12)
    assert blocks == [2, 2]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int64, np.longdouble])
def test_chunk_logits_are_float64_for_any_bias_dtype(dtype: type) -> None:
    x, a = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    got = ens.chunk_logits(x, a, np.array([1, -2], dtype=dtype), np.array([[0, 2]]))
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got[0], [[3.0, 0.0], [9.0, 6.0]])


def test_same_params_members_of_small_counts() -> None:
    assert ens.same_params_members(1, 1) == 1 and ens.same_params_members(0.5, 0.25) == 2
    for wide, member in ((0, 1), (1, 0), (-1, 1)):
        with pytest.raises(ValueError, match="positive"):
            ens.same_params_members(wide, member)
