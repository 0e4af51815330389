"""The activation file: written atomically, read back exactly, and bad files refused with one message."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import ActivationFile


def test_round_trip(acts_factory) -> None:
    path = acts_factory(n=300, width=32, clone_size=4, classes=3)
    file = ActivationFile(path)
    info = file.header
    assert (info.width, info.num_classes, dict(info.splits)) == (32, 3, {"train": 300, "test": 300})
    split = file.split("test")
    weight, bias = file.head()
    assert split.features.dtype == np.float32 and split.labels.dtype == np.int64
    np.testing.assert_allclose(split.features @ weight.T + bias, split.logits, rtol=1e-5, atol=1e-5)
    blocks = list(file.iter_blocks("test", rows=128))
    assert [len(b) for b in blocks] == [128, 128, 44]
    np.testing.assert_array_equal(np.concatenate(blocks), split.features)
    assert not list(path.parent.glob(".*.tmp")), "temporary file left behind"


def _replace(group: h5py.Group, name: str, data: np.ndarray) -> None:
    del group[name]
    group.create_dataset(name, data=data)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda f: f.attrs.__setitem__("format", "other"), "not a mitosis activation file"),
        (lambda f: f.attrs.__setitem__("format_version", 99), "format_version"),
        (lambda f: f.__delitem__("head/bias"), "missing dataset /head/bias"),
        (lambda f: f.__delitem__("test/labels"), "missing dataset /test/labels"),
        (lambda f: _replace(f["train"], "features", np.zeros((5, 32), np.float32)), "has shape"),
    ],
)
def test_bad_layout_is_refused(acts_factory, corrupt, message: str) -> None:
    path = acts_factory(width=32)
    with h5py.File(path, "r+") as f:
        corrupt(f)
    with pytest.raises(InputError, match=message):
        ActivationFile(path)


def test_nan_and_label_range_are_refused(acts_factory) -> None:
    path = acts_factory(width=16, classes=3)
    with h5py.File(path, "r+") as f:
        f["test/features"][3, 2] = np.nan
        f["train/labels"][0] = 7
    with pytest.raises(InputError, match="NaN or Inf"):
        ActivationFile(path).split("test")
    with pytest.raises(InputError, match="labels outside"):
        ActivationFile(path).split("train")


def test_not_hdf5(tmp_path: Path) -> None:
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        ActivationFile(bad)
    with pytest.raises(InputError, match="no such file"):
        ActivationFile(tmp_path / "missing.h5")


def test_network_labels_add_the_data_set_and_the_source_only_when_needed() -> None:
    from mitosis_cli.io.activations import network_labels

    one = {"arch": "mlp-2-relu", "width": 64, "seed": 0, "epoch": 100, "dataset": "mnist5k", "source": "a/acts.h5"}
    other = {**one, "width": 32, "seed": None, "epoch": float("nan"), "source": "b/acts.h5"}  # unknown seed, epoch
    assert network_labels([one, other]) == ["mlp-2-relu w64 s0 e100", "mlp-2-relu w32"]
    assert network_labels([one, {**one, "dataset": "cifar10"}]) == ["mnist5k mlp-2-relu w64 s0 e100",
                                                                   "cifar10 mlp-2-relu w64 s0 e100"]
    assert network_labels([one, {**one, "source": "c/acts.h5"}]) == ["mlp-2-relu w64 s0 e100 (a/acts.h5)",
                                                                    "mlp-2-relu w64 s0 e100 (c/acts.h5)"]
