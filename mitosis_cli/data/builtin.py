"""The built-in data: a real MNIST subset shipped with the package, and a generated hidden-manifold task."""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np

from mitosis_cli.errors import InputError

MNIST5K_FILE = "mnist_5k.csv.gz"
MNIST5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
MNIST5K_TEST_PER_CLASS = 100  # 500 images per class: 400 train, 100 test
SPLIT_SEED = 20220617  # fixed, so every run and seed sees the same train/test split


def mnist5k() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """5,000 MNIST digits (500 per class) as uint8 (N, 28, 28) images and int64 labels.

    Returns ``(train_x, train_y, test_x, test_y)``: a stratified split of 4,000 / 1,000 drawn once
    with a fixed seed, so it is the same for every run.
    """
    raw = resources.files("mitosis_cli.data").joinpath("builtin", MNIST5K_FILE).read_bytes()
    if hashlib.sha256(raw).hexdigest() != MNIST5K_SHA256:
        raise InputError(f"the built-in {MNIST5K_FILE} is damaged (checksum mismatch); reinstall mitosis")
    import gzip
    import io

    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.float32)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    test_mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test_mask[rng.choice(members, MNIST5K_TEST_PER_CLASS, replace=False)] = True
    train_idx = rng.permutation(np.flatnonzero(~test_mask))  # the file is sorted by class
    test_idx = np.flatnonzero(test_mask)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def hidden_manifold(
    n_train: int = 4000,
    n_test: int = 1000,
    input_dim: int = 784,
    latent_dim: int = 16,
    num_classes: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A hidden-manifold classification task (Goldt et al., Phys. Rev. X 2020), seeded.

    Latent ``z ~ N(0, I_D)``; inputs ``x = tanh(z F / sqrt(D))`` with a random Gaussian ``F`` (D x d),
    standardised per input; labels from a random two-layer teacher on the latent,
    ``y = argmax(relu(z W1 / sqrt(D)) W2)``, so the task is learnable but not linearly separable in x.

    Returns ``(train_x, train_y, test_x, test_y)`` as float32 (N, d) and int64 (N,).
    """
    if min(n_train, n_test) < 1 or min(input_dim, latent_dim) < 1 or num_classes < 2:
        raise InputError("synthetic data needs n, test, d, latent >= 1 and classes >= 2")
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((latent_dim, input_dim))
    hidden = 4 * num_classes
    w1 = rng.standard_normal((latent_dim, hidden))
    w2 = rng.standard_normal((hidden, num_classes))
    z = rng.standard_normal((n_train + n_test, latent_dim))
    x = np.tanh(z @ projection / np.sqrt(latent_dim))
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
    y = np.argmax(np.maximum(z @ w1 / np.sqrt(latent_dim), 0.0) @ w2, axis=1)
    x, y = x.astype(np.float32), y.astype(np.int64)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]
