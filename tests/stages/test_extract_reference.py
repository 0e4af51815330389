"""`extract` end to end: the activation file of a tiny trained MLP against the network's own forward pass,
written here from the checkpoint's state dict, through the Python API and the command line.

The file is read with h5py (not the package's reader); the head must be the state dict's, bit for bit,
the features and logits the eval-mode forward pass of the chosen weights (the last checkpoint, or a
saved epoch), the labels the data set's, and the attributes the run's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import mitosis_cli as mitosis
from mitosis_cli.cli.app import main
from mitosis_cli.data import load_dataset
from tests.stages.test_train_reference import DATASET, TRAIN_SIZE, WIDTH, forward, state_dict, train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("extract") / "run"
    train("api", folder)
    return folder


def extract(how: str, run: Path, out: Path, epoch: int | None, splits: tuple[str, ...]) -> None:
    if how == "api":
        mitosis.run_extract(mitosis.ExtractSettings(source=run, out=out, epoch=epoch, splits=splits, device="cpu"))
        return
    argv = ["extract", str(run), "-o", str(out), "--device", "cpu", "-q"]
    argv += ["--epoch", str(epoch)] if epoch is not None else []
    for split in splits:
        argv += ["--split", split]
    assert main(argv) == 0


@pytest.mark.parametrize("epoch, splits", [(None, ("train", "test")), (1, ("test",))])
@pytest.mark.parametrize("how", ["api", "cli"])
def test_activations_are_the_networks_forward_pass(how: str, epoch: int | None, splits: tuple[str, ...], run: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "acts.h5"
    extract(how, run, out, epoch, splits)
    checkpoint = run / "checkpoint.pt" if epoch is None else run / "checkpoints" / f"epoch-{epoch:04d}.pt"
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state_dict(checkpoint)
    data = load_dataset(DATASET, train_size=TRAIN_SIZE)
    inputs = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
    with h5py.File(out, "r") as f:
        assert sorted(k for k in f if k != "head") == sorted(splits)
        np.testing.assert_array_equal(f["head/weight"][...], raw["model"]["head.weight"].numpy())
        np.testing.assert_array_equal(f["head/bias"][...], raw["model"]["head.bias"].numpy())
        for split in splits:
            x, y = inputs[split]
            features, logits = (t.numpy() for t in forward(state, x))
            assert f[f"{split}/features"].dtype == np.float32 and f[f"{split}/features"].shape == (len(y), WIDTH)
            np.testing.assert_allclose(f[f"{split}/features"][...], features, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(f[f"{split}/logits"][...], logits, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(f[f"{split}/labels"][...], y.numpy())
        attrs = dict(f.attrs)
    assert (attrs["width"], attrs["num_classes"], attrs["seed"], attrs["dataset"], attrs["arch"]) == (
        WIDTH, 3, 3, DATASET, "mlp-2-batchnorm")
    assert attrs["epoch"] == (raw["epoch"] if epoch is None else epoch) and attrs["epoch"] == (3 if epoch is None else 1)
    assert attrs["source_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert json.loads(attrs["config"])["width"] == WIDTH


def test_the_epochs_differ(run: Path) -> None:
    """Reading the wrong checkpoint would show: the saved epochs' features are far apart."""
    x = load_dataset(DATASET, train_size=TRAIN_SIZE).test_x
    first, last = (forward(state_dict(run / "checkpoints" / f"epoch-{e:04d}.pt"), x)[0] for e in (1, 3))
    assert float((first - last).abs().max()) > 1e-2
