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

import numpy as np
import torch

from mitosis_cli.analysis.reconstruction import RIDGE_ALPHA, Moments, ridge_from_moments

_GATHER_ELEMENTS = 1 << 22  # gathered (rows x repeats x size) block budget, ~16 MiB of float32


def one_hot(labels: np.ndarray | torch.Tensor, num_classes: int) -> torch.Tensor:
    """(n, C) float64 one-hot targets for the probe."""
    lab = torch.as_tensor(labels, dtype=torch.int64)
    return torch.nn.functional.one_hot(lab, num_classes).to(torch.float64)


def head_readouts(weight: np.ndarray, bias: np.ndarray, chunks: np.ndarray,
                  rescale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
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
        Multiply the restricted weights by W / s.

    Returns
    -------
    coef : tensor (R, s, C)
        A[:, S_r]^T per chunk (times W / s if `rescale`).
    intercept : tensor (R, C)
        b for every chunk.
    """
    a = torch.as_tensor(np.asarray(weight, np.float32))
    idx = torch.as_tensor(np.asarray(chunks, np.int64))
    coef = a.T[idx]  # (R, s, C)
    if rescale:
        coef = coef * (a.shape[1] / idx.shape[1])
    intercept = torch.as_tensor(np.asarray(bias, np.float32)).expand(idx.shape[0], -1).clone()
    return coef, intercept


def probe_readouts(moments: Moments, width: int, chunks: np.ndarray,
                   alpha: float = RIDGE_ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge probes from each chunk to one-hot targets, from the moments of [X, Y] (W + C columns).

    Returns (coef (R, s, C), intercept (R, C)) in float32, in the layout of `head_readouts`.
    """
    targets = torch.arange(width, moments.dim, device=moments.scatter.device)
    fits: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}  # the same set (e.g. size W): one fit
    coefs, intercepts = [], []
    for chunk in np.asarray(chunks, np.int64):
        key = tuple(chunk.tolist())
        if key not in fits:
            ridge = ridge_from_moments(moments, chunk, alpha, targets)
            fits[key] = (ridge.coef, ridge.intercept)
        coefs.append(fits[key][0])
        intercepts.append(fits[key][1])
    return torch.stack(coefs).float(), torch.stack(intercepts).float()


def count_correct(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, chunks: np.ndarray,
                  coef: torch.Tensor, intercept: torch.Tensor) -> np.ndarray:
    """Number of rows whose argmax of x[S_r] coef_r + intercept_r equals the label, for each chunk r.

    Parameters
    ----------
    features : (n, W) float32
        A block of rows.
    labels : (n,) int
        Their labels.
    chunks : ndarray (R, s)
        Neuron indices.
    coef, intercept : tensors (R, s, C), (R, C)
        Readouts (`head_readouts`, `probe_readouts`).

    Returns
    -------
    ndarray of int64, shape (R,)

    Notes
    -----
    Small chunks gather X[:, S_r] for a group of repeats (cost n s R C); large ones multiply X by a
    W x (R C) readout that is zero outside each chunk (cost n W R C, but one GEMM).
    """
    device = coef.device
    x = torch.as_tensor(features).to(device, torch.float32)
    y = torch.as_tensor(labels).to(device, torch.int64)
    idx = torch.as_tensor(np.asarray(chunks, np.int64), device=device)
    n, width = x.shape
    repeats, size = idx.shape
    classes = coef.shape[2]
    correct = torch.zeros(repeats, dtype=torch.int64, device=device)
    if 8 * size > width:  # dense masked readout
        dense = torch.zeros(width, repeats, classes, dtype=torch.float32, device=device)
        dense[idx, torch.arange(repeats, device=device)[:, None]] = coef
        logits = (x @ dense.reshape(width, repeats * classes)).reshape(n, repeats, classes) + intercept
        return (logits.argmax(2) == y[:, None]).sum(0).cpu().numpy()
    group = max(1, _GATHER_ELEMENTS // max(1, n * size))
    for start in range(0, repeats, group):
        sel = slice(start, start + group)
        gathered = x[:, idx[sel]].permute(1, 0, 2)  # (g, n, s)
        logits = torch.bmm(gathered, coef[sel]) + intercept[sel][:, None, :]
        correct[sel] = (logits.argmax(2) == y[None, :]).sum(1)
    return correct.cpu().numpy()
