"""Data sets: the built-in MNIST subset, the generated task, and torchvision folders read offline."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mitosis_cli.data import load_dataset
from mitosis_cli.data.augment import random_crop_flip
from mitosis_cli.errors import InputError


def test_mnist5k_split_is_stratified_and_fixed() -> None:
    a, b = load_dataset("mnist5k"), load_dataset("mnist5k")
    assert a.train_x.shape == (4000, 1, 28, 28) and a.test_x.shape == (1000, 1, 28, 28)
    assert np.bincount(a.test_y.numpy()).tolist() == [100] * 10
    assert np.bincount(a.train_y.numpy()).tolist() == [400] * 10
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    # normalised with MNIST's mean/std: background pixels map to -0.1307/0.3081
    assert a.train_x.min().item() == pytest.approx(-0.1307 / 0.3081, rel=1e-5)
    assert abs(a.train_x.mean().item()) < 0.2
    assert load_dataset("mnist5k", train_size=100).train_x.shape[0] == 100


def test_synthetic_is_seeded_and_learnable() -> None:
    a = load_dataset("synthetic:n=600,test=200,d=30,latent=5,classes=3,seed=1")
    b = load_dataset("synthetic:n=600,test=200,d=30,latent=5,classes=3,seed=1")
    c = load_dataset("synthetic:n=600,test=200,d=30,latent=5,classes=3,seed=2")
    assert a.train_x.shape == (600, 30) and a.num_classes == 3
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x, c.train_x)
    assert set(a.train_y.unique().tolist()) == {0, 1, 2}
    # a least-squares linear readout beats chance: labels depend on the inputs
    x = torch.cat([a.train_x, torch.ones(600, 1)], 1).double()
    onehot = torch.nn.functional.one_hot(a.train_y, 3).double()
    coef = torch.linalg.lstsq(x, onehot).solution
    assert ((x @ coef).argmax(1) == a.train_y).double().mean() > 0.5


def test_unknown_and_bad_specs() -> None:
    with pytest.raises(InputError, match="unknown data set"):
        load_dataset("imagenet")
    with pytest.raises(InputError, match="bad synthetic data option"):
        load_dataset("synthetic:n=abc")
    with pytest.raises(InputError, match="--train-size"):
        load_dataset("mnist5k", train_size=10**6)


def _write_idx(path: Path, array: np.ndarray) -> None:
    dims = array.shape
    code = 0x08  # unsigned byte
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + array.tobytes())


def test_mnist_folder_in_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    # torchvision reads the uncompressed files; give it those too
    for gz in raw.glob("*.gz"):
        (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    data = load_dataset("mnist", data_dir=tmp_path)
    assert data.train_x.shape == (50, 1, 28, 28) and data.test_y.shape == (20,)


def test_cifar10_folder_and_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 4).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    # a generated folder has other checksums than the real files
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.train_x.shape == (20, 3, 32, 32) and data.augmentable
    with pytest.raises(InputError, match=r"cifar-100-python"):
        load_dataset("cifar100", data_dir=tmp_path / "empty")
    monkeypatch.delenv("MITOSIS_DATA_DIR", raising=False)
    with pytest.raises(InputError, match="--data-dir"):
        load_dataset("cifar10")


def test_random_crop_flip_matches_per_image_reference() -> None:
    images = torch.randn(6, 3, 8, 8)
    out = random_crop_flip(images, torch.Generator().manual_seed(3), pad=2)
    gen = torch.Generator().manual_seed(3)  # replay the same draws
    dy = torch.randint(0, 5, (6,), generator=gen)
    dx = torch.randint(0, 5, (6,), generator=gen)
    flip = torch.rand(6, generator=gen) < 0.5
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    for i in range(6):
        crop = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        expected = crop[:, :, ::-1] if flip[i] else crop
        np.testing.assert_array_equal(out[i].numpy(), expected)
