"""Chunk accuracy of the restricted head and the linear probe, against brute force and scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from mitosis_cli.analysis import accuracy
from mitosis_cli.analysis.accuracy import Readout, count_correct, head_readouts, one_hot, probe_readouts
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


def _brute_force_counts(x: np.ndarray, labels: np.ndarray, chunks: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                        scale: float) -> list[int]:
    """Per chunk and row, the first class of largest logit (np.argmax's tie rule) against the label, in float64."""
    counts = []
    for chunk in chunks:
        hits = 0
        for row, label in zip(x.astype(np.float64), labels, strict=True):
            logits = [scale * sum(row[i] * float(weight[c, i]) for i in chunk) + float(bias[c]) for c in range(len(bias))]
            hits += logits.index(max(logits)) == label  # list.index: the first maximum
        counts.append(hits)
    return counts


def test_ties_go_to_the_first_class_across_row_pieces_and_chunk_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small-integer data (exact in float32) with classes 0 and 1 read out identically: every row ties between them."""
    monkeypatch.setattr(accuracy, "_PIECE_ROWS", 7)  # 3 pieces of 7 and a partial one of 2
    monkeypatch.setattr(accuracy, "_GATHER_BYTES", 4 * 7 * 4 * 2)  # two chunks of 4 per gathered group
    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, (23, 16)).astype(np.float32)
    weight = rng.integers(-2, 3, (4, 16)).astype(np.float32)
    weight[1] = weight[0]  # classes 0 and 1 always tie
    bias = np.array([1.0, 1.0, 0.0, -1.0], np.float32)
    labels = rng.integers(0, 3, 23)  # class 3 is never a label
    chunks = draw_chunks(16, 4, 5, seed=0)
    chunks = np.concatenate([chunks, chunks[1:2]])  # a chunk drawn twice is counted for both rows
    got = count_correct(x, labels, chunks, [head_readouts(weight, bias, chunks, rescale=True)])[0]
    for row, scale in zip(got, (1.0, 4.0), strict=True):  # W / s = 4: exact
        np.testing.assert_array_equal(row, _brute_force_counts(x, labels, chunks, weight, bias, scale))
    assert got.sum() > 0


def test_any_integer_dtype_of_labels_and_chunks_and_float64_data() -> None:
    """Labels as uint16 or int32, chunk indices as int16, features and head in float64: the same counts."""
    x, labels, weight, bias = _data(6, n=60, width=12, classes=3)
    chunks = draw_chunks(12, 3, 4, seed=1)
    want = _brute_force_counts(x, labels, chunks, weight, bias, 1.0)
    for label_dtype in (np.uint16, np.int32):
        readouts = [head_readouts(weight.astype(np.float64), bias.astype(np.float64), chunks.astype(np.int16))]
        got = count_correct(x.astype(np.float64), labels.astype(label_dtype), chunks.astype(np.int16), readouts)
        np.testing.assert_array_equal(got[0][0], want)
    targets = one_hot(labels.astype(np.int32), 3)
    np.testing.assert_array_equal(targets.numpy(), np.eye(3)[labels])
    moments = Moments.of(np.concatenate([x.astype(np.float64), targets.numpy()], axis=1))
    narrow, wide = probe_readouts(moments, 12, chunks.astype(np.int16)), probe_readouts(moments, 12, chunks)
    np.testing.assert_array_equal(narrow.coef.numpy(), wide.coef.numpy())
    np.testing.assert_array_equal(narrow.intercept.numpy(), wide.intercept.numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_counts_and_probes_match_the_cpu() -> None:
    """Small-integer data, so every logit is exact in float32 whatever order the GPU sums in."""
    rng = np.random.default_rng(7)
    x = rng.integers(-3, 4, (300, 24)).astype(np.float32)
    weight, bias = rng.integers(-2, 3, (4, 24)).astype(np.float32), rng.integers(-2, 3, 4).astype(np.float32)
    labels = rng.integers(0, 4, 300)
    chunks = draw_chunks(24, 5, 6, seed=2)
    rows = np.concatenate([x.astype(np.float64), one_hot(labels, 4).numpy()], axis=1)
    probe, probe_gpu = probe_readouts(Moments.of(rows), 24, chunks), probe_readouts(Moments.of(rows, device="cuda"), 24, chunks)
    torch.testing.assert_close(probe_gpu.coef.cpu(), probe.coef, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(probe_gpu.intercept.cpu(), probe.intercept, rtol=1e-4, atol=1e-5)
    head = head_readouts(weight, bias, chunks, rescale=True)
    head_gpu = Readout(head.coef.cuda(), head.intercept.cuda(), head.scales)
    for got, want in zip(count_correct(x, labels, chunks, [head_gpu]), count_correct(x, labels, chunks, [head]), strict=True):
        np.testing.assert_array_equal(got, want)
