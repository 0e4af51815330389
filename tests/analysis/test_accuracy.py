"""Chunk accuracy of the restricted head and the linear probe, against brute force and scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from mitosis_cli.analysis.accuracy import count_correct, head_readouts, one_hot, probe_readouts
from mitosis_cli.analysis.chunks import draw_chunks
from mitosis_cli.analysis.reconstruction import Moments


def _data(seed: int, n: int = 200, width: int = 32, classes: int = 5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, width)).astype(np.float32)
    weight = rng.standard_normal((classes, width)).astype(np.float32)
    bias = rng.standard_normal(classes).astype(np.float32)
    labels = np.argmax(x @ weight.T + bias + 2.0 * rng.standard_normal((n, classes)), axis=1)
    return x, labels, weight, bias


@pytest.mark.parametrize("size", [1, 3, 16, 32])  # gather path (small) and dense masked path (large)
@pytest.mark.parametrize("rescale", [False, True])
def test_restricted_head_matches_brute_force(size: int, rescale: bool) -> None:
    x, labels, weight, bias = _data(0)
    chunks = draw_chunks(32, size, 7, seed=1)
    got = count_correct(x, labels, chunks, [head_readouts(weight, bias, chunks, rescale)])[0]
    for row, scale in zip(got, [1.0, 32 / size] if rescale else [1.0], strict=True):
        expected = [int((np.argmax(scale * (x[:, c] @ weight[:, c].T) + bias, axis=1) == labels).sum()) for c in chunks]
        np.testing.assert_array_equal(row, expected)


def test_whole_layer_head_is_the_network() -> None:
    x, labels, weight, bias = _data(1)
    chunks = np.arange(32)[None, :]
    got = count_correct(x, labels, chunks, [head_readouts(weight, bias, chunks)])[0][0]
    assert got[0] == (np.argmax(x @ weight.T + bias, 1) == labels).sum()


def test_probe_matches_sklearn_ridge_on_one_hot() -> None:
    x, labels, _, _ = _data(2, n=300, width=20, classes=4)
    x_test, labels_test, _, _ = _data(3, n=150, width=20, classes=4)
    targets = one_hot(labels, 4).numpy()
    moments = Moments.of(np.concatenate([x.astype(np.float64), targets], axis=1))
    chunks = draw_chunks(20, 6, 5, seed=0)
    probe = probe_readouts(moments, 20, chunks, alpha=1e-8)
    got = count_correct(x_test, labels_test, chunks, [probe])[0][0]
    for r, chunk in enumerate(chunks):
        model = Ridge(alpha=1e-8).fit(x[:, chunk].astype(np.float64), targets)
        np.testing.assert_allclose(probe.coef[r].numpy(), model.coef_.T, rtol=1e-4, atol=1e-5)
        assert got[r] == (np.argmax(model.predict(x_test[:, chunk]), 1) == labels_test).sum()


def test_one_hot() -> None:
    np.testing.assert_array_equal(one_hot(np.array([2, 0]), 3).numpy(), [[0, 0, 1], [1, 0, 0]])
    assert one_hot(torch.tensor([1]), 2).dtype == torch.float64


def _previous_counts(x: np.ndarray, labels: np.ndarray, chunks: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                     scale: float) -> np.ndarray:
    """The implementation before the transposed gather: X[:, S] gathered per chunk, times A[:, S]^T scaled, plus b."""
    xt = torch.as_tensor(x)
    coef = torch.as_tensor(weight).T[torch.as_tensor(chunks)] * scale  # (R, s, C)
    gathered = xt[:, torch.as_tensor(chunks)].permute(1, 0, 2)  # (R, n, s)
    logits = torch.bmm(gathered, coef) + torch.as_tensor(bias)
    return (logits.argmax(2) == torch.as_tensor(labels)).sum(1).numpy()


@pytest.mark.parametrize("size", [1, 7, 64, 200])
def test_counts_equal_the_previous_implementation(size: int) -> None:
    x, labels, weight, bias = _data(4, n=700, width=256, classes=10)
    chunks = draw_chunks(256, size, 30, seed=2)
    head = head_readouts(weight, bias, chunks, rescale=True)
    got = count_correct(x, labels, chunks, [head])[0]
    for row, scale in zip(got, (1.0, 256 / size), strict=True):
        np.testing.assert_array_equal(row, _previous_counts(x, labels, chunks, weight, bias, scale))
