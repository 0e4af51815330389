"""Shared test set-up: one quiet torch thread, no silent skips, and a factory for small activation files."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads cost 10-60x here

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mitosis_cli.io.activations import ActivationHeader, write_activations
from tests import skip_policy

pytest_plugins = ("pytester",)  # tests/test_skip_policy.py runs small pytest sessions

torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    skip_policy.register(config)  # a skip for a reason not on its allow-list fails the run


def write_planted_acts(path: Path, n: int = 400, width: int = 64, clone_size: int = 8, noise: float = 0.05,
                       classes: int = 4, seed: int = 0, splits: tuple[str, ...] = ("train", "test"),
                       arch: str = "planted") -> Path:
    """An activation file with planted clones and a head that reads the signal.

    Labels are the argmax of a fixed random linear readout of the signal, and the head is that readout
    spread evenly over each signal coordinate's copies; the seed changes only the noise, so files of
    different seeds hold the same samples and labels.
    """
    noise_rng = np.random.default_rng(seed)
    readout = np.random.default_rng(1000).standard_normal((classes, clone_size))
    copy_of = np.arange(width) % clone_size
    copies = np.bincount(copy_of, minlength=clone_size)
    weight = (readout[:, copy_of] / copies[copy_of]).astype(np.float32)
    bias = np.zeros(classes, np.float32)
    streams = {}
    for i, split in enumerate(splits):
        signal = np.random.default_rng(2000 + i).standard_normal((n, clone_size))
        feats = (signal[:, copy_of] + noise * noise_rng.standard_normal((n, width))).astype(np.float32)
        labels = np.argmax(signal @ readout.T, axis=1).astype(np.int64)
        logits = (feats @ weight.T + bias).astype(np.float32)
        streams[split] = (n, iter([(feats, logits, labels)]))
    meta = ActivationHeader(width=width, num_classes=classes, dataset="planted", arch=arch, seed=seed, epoch=0,
                          layer="planted", config={"clone_size": clone_size, "noise": noise})
    return write_activations(path, meta, weight, bias, streams)


ActsFactory = Callable[..., Path]


@pytest.fixture
def acts_factory(tmp_path: Path) -> ActsFactory:
    """Write an activation file with planted clones and a head that reads the signal.

    Call as ``acts_factory(name="a.h5", n=400, width=64, clone_size=8, noise=0.05, classes=4, seed=0,
    splits=("train", "test"))``; labels are the argmax of a random linear readout of the signal, and the
    head is that readout spread evenly over each signal coordinate's copies.
    """

    def make(name: str = "acts.h5", n: int = 400, width: int = 64, clone_size: int = 8, noise: float = 0.05,
             classes: int = 4, seed: int = 0, splits: tuple[str, ...] = ("train", "test"), arch: str = "planted") -> Path:
        return write_planted_acts(tmp_path / name, n, width, clone_size, noise, classes, seed, splits, arch)

    return make
