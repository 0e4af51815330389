"""Ensembles of networks and of chunks of one network: logits in, numbers out.

Notation: a member k gives logits z_k (N, C) on N samples of C classes; labels y (N,). The ensemble of a
set S of members is read out in one of two ways (``combine``):

- ``"logits"`` (the paper): z_S = sum_{k in S} z_k, log p_S = log_softmax(z_S). Summing and averaging
  logits give the same predictions; the cross-entropy of the sum is that of a sharper (temperature 1/|S|)
  average, as in the paper.
- ``"probs"``: p_S = (1/|S|) sum_{k in S} softmax(z_k), the usual deep-ensemble average.

The *internal ensemble* reads a wide network's last hidden layer X (N, W) in disjoint chunks S_1, S_2, ...
of w neurons, each with the trained head restricted to the chunk and the full bias:
z_j = X[:, S_j] A[:, S_j]^T + b, and combines the chunks like members. With ``"logits"`` the sum of K
chunks is the readout of their union plus (K - 1) b, so it equals the accuracy of one chunk of K w neurons
up to the bias; with ``"probs"`` it is a genuine average of the chunks' predictions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COMBINES = ("logits", "probs")
METRICS = ("accuracy", "error", "cross_entropy")
_BLOCK_FLOATS = 1 << 22  # chunk logits held at once when averaging probabilities (~32 MiB float64)


@dataclass(frozen=True)
class Measurement:
    """The metrics of one ensemble (`members` members, draw `repeat`) on one split."""

    members: int
    repeat: int
    split: str
    values: dict[str, float]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax along the last axis, computed stably in float64: z - max z - log sum exp(z - max z)."""
    z = np.asarray(logits, dtype=np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = a.max(axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(top, axis) + np.log(np.exp(a - top).sum(axis=axis))


def combine_members(member_logits: np.ndarray, combine: str = "logits") -> np.ndarray:
    """Log-probabilities (N, C) of the ensemble of the K members in `member_logits` (K, N, C).

    ``"logits"``: log_softmax(sum_k z_k). ``"probs"``: log((1/K) sum_k softmax(z_k)), computed as
    logsumexp_k(log_softmax(z_k)) - log K so that tiny probabilities do not underflow.
    """
    member_logits = np.asarray(member_logits, dtype=np.float64)
    if member_logits.ndim != 3 or member_logits.shape[0] < 1:
        raise ValueError(f"expected member logits of shape (K >= 1, N, C), got {member_logits.shape}")
    if combine == "logits":
        return log_softmax(member_logits.sum(axis=0))
    if combine == "probs":
        return _logsumexp(log_softmax(member_logits), axis=0) - math.log(member_logits.shape[0])
    raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")


def classification_metrics(log_probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, error and mean cross-entropy of predictions `log_probs` (N, C) against `labels` (N,).

    accuracy = (1/N) sum_n [argmax_c log p_nc = y_n] (ties go to the lowest class), error = 1 - accuracy,
    cross_entropy = -(1/N) sum_n log p_{n, y_n} (natural log).
    """
    labels = np.asarray(labels)
    accuracy = float(np.mean(np.argmax(log_probs, axis=1) == labels))
    cross_entropy = float(-np.mean(log_probs[np.arange(len(labels)), labels]))
    return {"accuracy": accuracy, "error": 1.0 - accuracy, "cross_entropy": cross_entropy}


def ensemble_sizes(pool: int, sizes: Sequence[int] | None = None) -> list[int]:
    """Ensemble sizes to measure for a pool of `pool` members.

    Default: the powers of two below the pool and the pool itself (1, 2, 4, ..., pool). Given `sizes`
    are sorted, deduplicated and capped at the pool (larger ones cannot be drawn).
    """
    if pool < 1:
        raise ValueError(f"pool must hold at least one member, got {pool}")
    if sizes is None:
        return sorted({2**i for i in range(pool.bit_length()) if 2**i < pool} | {pool})
    return sorted({int(k) for k in sizes if 1 <= k <= pool})


def draw_subsets(pool: int, size: int, repeats: int, rng: np.random.Generator) -> np.ndarray:
    """Member indices (R, size) of the ensembles to evaluate, each row sorted.

    When the pool has at most `repeats` distinct subsets of `size` members, all of them are returned
    (R = C(pool, size), no draw); otherwise `repeats` subsets are drawn uniformly, each without
    replacement (R = repeats; two draws may coincide).
    """
    if not 1 <= size <= pool:
        raise ValueError(f"size must be in 1..{pool}, got {size}")
    if math.comb(pool, size) <= repeats:
        return np.array(list(itertools.combinations(range(pool), size)), dtype=np.int64)
    orders = rng.permuted(np.tile(np.arange(pool), (repeats, 1)), axis=1)
    return np.sort(orders[:, :size], axis=1)


def ensemble_curve(
    pool_logits: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    sizes: Sequence[int],
    repeats: int,
    rng: np.random.Generator,
    combine: str = "logits",
) -> list[Measurement]:
    """Metrics of ensembles of each size drawn from a pool, on every split.

    Parameters
    ----------
    pool_logits : dict
        ``{split: (P, N, C) logits}`` of the P members of the pool.
    labels : dict
        ``{split: (N,) labels}``.
    sizes : sequence of int
        Ensemble sizes K, each in 1..P.
    repeats : int
        Subsets per size (see `draw_subsets`); the same subsets are scored on every split.
    rng : numpy.random.Generator
        Source of the subset draws.
    combine : {"logits", "probs"}
        How members are combined (see `combine_members`).
    """
    pool = next(iter(pool_logits.values())).shape[0]
    out = []
    for size in sizes:
        for repeat, subset in enumerate(draw_subsets(pool, size, repeats, rng)):
            for split, logits in pool_logits.items():
                log_p = combine_members(logits[subset], combine)
                out.append(Measurement(size, repeat, split, classification_metrics(log_p, labels[split])))
    return out


def random_partition(width: int, chunk_size: int, rng: np.random.Generator) -> np.ndarray:
    """Disjoint random chunks (W // w, w) of neuron indices: a random permutation cut into rows.

    When w does not divide W the W mod w neurons left over are not used.
    """
    if not 1 <= chunk_size <= width:
        raise ValueError(f"chunk size must be in 1..{width}, got {chunk_size}")
    count = width // chunk_size
    return rng.permutation(width)[: count * chunk_size].reshape(count, chunk_size)


def chunk_logits(features: np.ndarray, weight: np.ndarray, bias: np.ndarray, chunks: np.ndarray) -> np.ndarray:
    """Logits (M, N, C) of M chunks read out with the trained head restricted to each chunk.

    z_j = X[:, S_j] A[:, S_j]^T + b for the rows S_j of `chunks` (M, w); X is (N, W), A (C, W), b (C,).
    """
    x = np.asarray(features)[:, chunks].astype(np.float64).transpose(1, 0, 2)  # (M, N, w)
    a = np.asarray(weight)[:, chunks].astype(np.float64).transpose(1, 2, 0)  # (M, w, C)
    return np.matmul(x, a) + np.asarray(bias, dtype=np.float64)


def _log_summed_chunk_probs(features: np.ndarray, weight: np.ndarray, bias: np.ndarray, chunks: np.ndarray) -> np.ndarray:
    """log sum_j softmax(z_j) over the chunks, a few chunks at a time to bound memory."""
    n, classes = features.shape[0], weight.shape[0]
    step = max(1, _BLOCK_FLOATS // max(1, n * classes))
    parts = [_logsumexp(log_softmax(chunk_logits(features, weight, bias, chunks[i : i + step])), axis=0)
             for i in range(0, len(chunks), step)]
    return _logsumexp(np.stack(parts), axis=0)


def chunk_ensemble_metrics(
    features: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    labels: np.ndarray,
    partition: np.ndarray,
    counts: Sequence[int],
    combine: str = "logits",
) -> dict[int, dict[str, float]]:
    """Metrics of the internal ensembles of the first K chunks of `partition`, for each K in `counts`.

    Parameters
    ----------
    features : ndarray
        The last hidden layer X, (N, W).
    weight, bias : ndarray
        The trained head A (C, W) and b (C,).
    labels : ndarray
        (N,) class labels.
    partition : ndarray
        Disjoint chunks (M, w), e.g. from `random_partition`; taking its first K rows draws K chunks.
    counts : sequence of int
        Numbers of chunks K, each in 1..M.
    combine : {"logits", "probs"}
        ``"logits"``: log_softmax(sum_{j<K} z_j) = log_softmax(X_U A_U^T + K b) with U the union of the
        chunks; ``"probs"``: log((1/K) sum_{j<K} softmax(z_j)).

    Returns
    -------
    dict
        ``{K: classification_metrics(...)}``. The chunks are accumulated in order, so the cost of all
        counts together is one readout of the largest union.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    x, a = np.asarray(features), np.asarray(weight)  # float64 only for the columns in use: X can be large
    b = np.asarray(bias, dtype=np.float64)
    total: np.ndarray | None = None  # summed logits, or log of summed probabilities, of the chunks so far
    done = 0
    out: dict[int, dict[str, float]] = {}
    for count in sorted(set(counts)):
        if not 1 <= count <= len(partition):
            raise ValueError(f"number of chunks must be in 1..{len(partition)}, got {count}")
        block = partition[done:count]
        if combine == "logits":
            union = block.ravel()  # summing chunk readouts = reading out their union, one bias per chunk
            part = x[:, union].astype(np.float64) @ a[:, union].astype(np.float64).T + len(block) * b
            total = part if total is None else total + part
            log_p = log_softmax(total)
        else:
            part = _log_summed_chunk_probs(x, a, b, block)
            total = part if total is None else np.logaddexp(total, part)
            log_p = total - math.log(count)
        out[count] = classification_metrics(log_p, labels)
        done = count
    return out


def bias_variance(member_logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Bias-variance decomposition of the cross-entropy over members (Heskes 1998, the KL decomposition).

    With member probabilities p_k (k = 1..K) and their normalised geometric mean
    q = exp((1/K) sum_k log p_k) / Z, the mean member loss splits exactly into

        loss     = (1/K) sum_k (1/N) sum_n -log p_k(y_n | n)
        bias     = (1/N) sum_n -log q(y_n | n)                       (loss of the "central" model)
        variance = (1/K) sum_k (1/N) sum_n KL(q(. | n) || p_k(. | n)) = (1/N) sum_n -log Z_n >= 0

    and loss = bias + variance. The labels are one-hot, so there is no separate noise term. q is the
    softmax of the members' mean logit. The variance is the spread of the members around q: with few
    members it is underestimated by about a factor (K - 1) / K.

    Parameters
    ----------
    member_logits : ndarray
        (K, N, C) logits of the K members.
    labels : ndarray
        (N,) class labels.
    """
    log_p = log_softmax(member_logits)  # (K, N, C)
    labels = np.asarray(labels)
    rows = np.arange(len(labels))
    log_q = log_softmax(log_p.mean(axis=0))  # normalised geometric mean of the members' probabilities
    loss = float(-log_p[:, rows, labels].mean())
    bias = float(-log_q[rows, labels].mean())
    variance = float((np.exp(log_q) * (log_q - log_p)).sum(axis=-1).mean())
    return {"loss": loss, "bias": bias, "variance": variance}


def same_params_members(params_wide: float, params_member: float) -> int:
    """Members K of an ensemble with about the parameters of the wide network: round(P_wide / P_member), >= 1."""
    if params_wide <= 0 or params_member <= 0:
        raise ValueError("parameter counts must be positive")
    return max(1, round(params_wide / params_member))
