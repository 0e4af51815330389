"""How well a chunk classifies: the trained head restricted to the chunk, and a linear probe fitted on it.

Chunk accuracy (Doimo et al. 2022): the logits of chunk S are the trained head restricted to S with
the full bias and no retraining,

    logits_S = X[:, S] A[:, S]^T + b,

optionally rescaled by W / w_c (``rescale``): logits_S = (W / w_c) X[:, S] A[:, S]^T + b, which keeps the
logit scale of the full layer when the chunk's neurons are copies of the others.

Linear probe: ridge regression from the chunk to one-hot targets Y with intercept, fitted on the train
split from its moments (the augmented scatter of [X, Y]),

    B = (S_SS + alpha I)^{-1} S_SY,   c = mu_Y - B^T mu_S,   prediction = argmax (x_S B + c),

and scored on the test split. It separates "the chunk holds the class information" from "the
trained head, restricted to the chunk, reads it out".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mitosis_cli.analysis.chunk_regression import RidgeSolver
from mitosis_cli.analysis.reconstruction import RIDGE_ALPHA, Moments

_GATHER_BYTES = 2 << 20  # gathered (repeats x size x rows) float32 block: stays in the cache
_PIECE_ROWS = 256  # rows transposed and gathered at a time


def one_hot(labels: np.ndarray | torch.Tensor, num_classes: int) -> torch.Tensor:
    """(n, C) float64 one-hot targets for the probe."""
    lab = torch.as_tensor(labels, dtype=torch.int64)
    return torch.nn.functional.one_hot(lab, num_classes).to(torch.float64)


@dataclass(frozen=True)
class Readout:
    """Linear readouts of R chunks: logits_r = scale * x[S_r] coef_r + intercept_r, for each scale.

    Attributes
    ----------
    coef : tensor (R, s, C) float32
    intercept : tensor (R, C) float32
    scales : tuple of float
        One count per scale (the restricted head: 1, and W / s with ``--rescale``).
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    scales: tuple[float, ...] = (1.0,)


def head_readouts(weight: np.ndarray, bias: np.ndarray, chunks: np.ndarray,
                  rescale: bool = False) -> Readout:
    """Readouts of the trained head restricted to each chunk.

    Parameters
    ----------
    weight : ndarray (C, W)
        Head weight A.
    bias : ndarray (C,)
        Head bias b (kept whole for every chunk).
    chunks : ndarray (R, s)
        Neuron indices of each chunk.
    rescale : bool
        Also score the restricted weights times W / s (a second scale).

    Returns
    -------
    Readout
        coef A[:, S_r]^T per chunk, (R, s, C); intercept b for every chunk; scales (1,) or (1, W / s).
    """
    a = torch.as_tensor(np.asarray(weight, np.float32))
    idx = torch.as_tensor(np.asarray(chunks, np.int64))
    coef = a.T[idx]  # (R, s, C)
    intercept = torch.as_tensor(np.asarray(bias, np.float32)).expand(idx.shape[0], -1).clone()
    return Readout(coef, intercept, (1.0, a.shape[1] / idx.shape[1]) if rescale else (1.0,))


def probe_readouts(moments: Moments, width: int, chunks: np.ndarray, alpha: float = RIDGE_ALPHA) -> Readout:
    """Ridge probes from each chunk to one-hot targets, from the moments of [X, Y] (W + C columns).

    B = (S_SS + alpha I)^{-1} S_SY and c = mu_Y - B^T mu_S per chunk (one Cholesky factor of s x s each);
    returned in float32, in the layout of `head_readouts`.
    """
    scatter = moments.scatter
    cross_all = scatter[:width, width:]  # S_XY, (W, C)
    idx_all = np.asarray(chunks, np.int64)
    repeats, size = idx_all.shape
    # written in place: nothing small stays allocated between the chunks' large temporaries, so the
    # C heap can reuse their space instead of growing around what is kept
    coef_out = torch.empty(repeats, size, cross_all.shape[1], dtype=torch.float32, device=scatter.device)
    intercept_out = torch.empty(repeats, cross_all.shape[1], dtype=torch.float32, device=scatter.device)
    first: dict[bytes, int] = {}  # the same set (e.g. size W): one fit
    for r, chunk in enumerate(idx_all):
        earlier = first.setdefault(chunk.tobytes(), r)
        if earlier != r:
            coef_out[r], intercept_out[r] = coef_out[earlier], intercept_out[earlier]
            continue
        idx = torch.as_tensor(chunk, device=scatter.device)
        gram = scatter.index_select(0, idx).index_select(1, idx)
        gram.diagonal().add_(alpha)
        coef = RidgeSolver(gram, alpha).solve(cross_all.index_select(0, idx))
        coef_out[r] = coef
        intercept_out[r] = moments.mean[width:] - coef.T @ moments.mean.index_select(0, idx)
    return Readout(coef_out, intercept_out)


def count_correct(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, chunks: np.ndarray,
                  readouts: Sequence[Readout]) -> list[np.ndarray]:
    """Number of rows whose argmax of each chunk's logits equals the label, for several readouts at once.

    Parameters
    ----------
    features : (n, W) float32
        A block of rows.
    labels : (n,) int
        Their labels.
    chunks : ndarray (R, s)
        Neuron indices.
    readouts : sequence of Readout
        Readouts of these chunks (`head_readouts`, `probe_readouts`); they share one gather of the data.

    Returns
    -------
    list of ndarray of int64, shape (len(scales), R), one per readout

    Notes
    -----
    Pieces of 256 rows are transposed (W x n), so gathering a chunk's neurons copies whole rows of
    length n from the cache; the chunks' logits come from one batched GEMM of the gathered (R, s, n)
    block with the readouts' stacked (R, C_total, s) weights: n s C_total multiply-adds per chunk, the
    arithmetic the metric needs. Identical chunks (every chunk of size W) are computed once.
    """
    device = readouts[0].coef.device
    x = torch.as_tensor(features).to(device, torch.float32)
    y = torch.as_tensor(labels).to(device, torch.int64)
    idx_all = np.asarray(chunks, np.int64)
    position: dict[bytes, int] = {}
    first: list[int] = []  # the first chunk of each distinct set
    back = np.empty(len(idx_all), np.int64)  # each chunk's distinct set
    for i, row in enumerate(idx_all):
        back[i] = position.setdefault(row.tobytes(), len(first))
        if back[i] == len(first):
            first.append(i)
    idx = torch.as_tensor(idx_all[first], device=device)
    repeats, size = idx.shape
    weights = torch.cat([r.coef[first] for r in readouts], dim=2).transpose(1, 2).contiguous()  # (R', K, s)
    intercepts = [r.intercept[first][:, :, None] for r in readouts]
    counts = [torch.zeros(len(r.scales), repeats, dtype=torch.int64, device=device) for r in readouts]
    for p0 in range(0, x.shape[0], _PIECE_ROWS):  # a piece of rows, transposed, stays in cache while it is gathered
        xt = x[p0 : p0 + _PIECE_ROWS].T.contiguous()  # (W, n)
        n = xt.shape[1]
        products = torch.empty(repeats, weights.shape[1], n, device=device)
        group = max(1, _GATHER_BYTES // (4 * n * size))
        for start in range(0, repeats, group):
            sel = slice(start, start + group)
            gathered = xt.index_select(0, idx[sel].reshape(-1)).view(-1, size, n)  # (g, s, n)
            torch.bmm(weights[sel], gathered, out=products[sel])
        offset = 0
        for r, readout in enumerate(readouts):
            classes = readout.coef.shape[2]
            part = products[:, offset : offset + classes, :]
            offset += classes
            for k, scale in enumerate(readout.scales):
                logits = part + intercepts[r] if scale == 1.0 else torch.addcmul(intercepts[r], part, torch.tensor(scale))
                counts[r][k] += _argmax_hits(logits, y[p0 : p0 + n])
    return [c.cpu().numpy()[:, back] for c in counts]


def _argmax_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per chunk, the rows whose argmax over classes (the first maximum, as torch.argmax) is the label.

    logits (R, C, n): a running maximum over the C contiguous (R, n) planes; torch.argmax over the middle
    dimension of such a tensor costs more than the GEMM that made it.
    """
    best = logits[:, 0].clone()
    arg = torch.zeros(best.shape, dtype=torch.int64, device=best.device)
    for c in range(1, logits.shape[1]):
        better = logits[:, c] > best
        torch.where(better, logits[:, c], best, out=best)
        arg.masked_fill_(better, c)
    return (arg == labels).sum(1)
