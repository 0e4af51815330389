"""Data-set registry: names, normalisation, and loading into tensors that can live on the device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mitosis_cli.data import builtin
from mitosis_cli.errors import InputError

DATA_DIR_ENV = "MITOSIS_DATA_DIR"


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set: how to normalise it and what a local folder must contain."""

    name: str
    description: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentable: bool = False  # the paper's crop + flip applies (CIFAR)
    torchvision_class: str = ""
    expected_files: str = ""  # what a local folder must hold, for the error message
    input_shape: tuple[int, ...] = (1, 28, 28)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist5k", "built-in: 5,000 real MNIST digits (4,000 train / 1,000 test)", 10, (0.1307,), (0.3081,)),
        DatasetSpec(
            "synthetic",
            "built-in: generated hidden-manifold task; options as synthetic:n=4000,test=1000,d=784,latent=16,classes=10,seed=0",
            10,
            (0.0,),
            (1.0,),
        ),
        DatasetSpec("mnist", "MNIST (local torchvision folder)", 10, (0.1307,), (0.3081,), False, "MNIST",
                    "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
        DatasetSpec("fashion-mnist", "Fashion-MNIST (local torchvision folder)", 10, (0.2860,), (0.3530,), False,
                    "FashionMNIST", "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
        DatasetSpec("kmnist", "Kuzushiji-MNIST (local torchvision folder)", 10, (0.1918,), (0.3483,), False, "KMNIST",
                    "KMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
        DatasetSpec("cifar10", "CIFAR-10 (local torchvision folder)", 10, (0.4914, 0.4822, 0.4465),
                    (0.2470, 0.2435, 0.2616), True, "CIFAR10", "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
                    (3, 32, 32)),
        DatasetSpec("cifar100", "CIFAR-100 (local torchvision folder)", 100, (0.5071, 0.4865, 0.4409),
                    (0.2673, 0.2564, 0.2762), True, "CIFAR100", "cifar-100-python/{train,test,meta}", (3, 32, 32)),
    )
}


@dataclass(frozen=True)
class Dataset:
    """A data set as tensors: inputs normalised float32 (N, ...), labels int64 (N,)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    augmentable: bool

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device) -> Dataset:
        """The same data on `device` (small data sets live there for the whole run)."""
        move = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "test_x", "test_y")}
        return Dataset(self.name, num_classes=self.num_classes, augmentable=self.augmentable, **move)


def _parse_synthetic(spec: str) -> dict[str, int]:
    keys = {"n": "n_train", "test": "n_test", "d": "input_dim", "latent": "latent_dim", "classes": "num_classes", "seed": "seed"}
    params: dict[str, int] = {}
    _, _, rest = spec.partition(":")
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in keys or not value.lstrip("-").isdigit():
            raise InputError(f"bad synthetic data option {item!r}", hint=f"use synthetic:{','.join(k + '=INT' for k in keys)}")
        params[keys[key]] = int(value)
    return params


def _images_to_tensor(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> normalised float32 (N, C, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


def dataset_input_shape(name: str) -> tuple[int, ...]:
    """Shape of one input of data set `name` (without loading it)."""
    key = name.split(":", 1)[0]
    if key not in DATASETS:
        raise InputError(f"unknown data set {name!r}", hint=f"choose one of: {', '.join(DATASETS)}")
    if key == "synthetic":
        return (_parse_synthetic(name).get("input_dim", 784),)
    return DATASETS[key].input_shape


def resolve_data_dir(data_dir: Path | None) -> Path | None:
    """`--data-dir`, else $MITOSIS_DATA_DIR, else None."""
    if data_dir is not None:
        return data_dir
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else None


def _load_torchvision(spec: DatasetSpec, data_dir: Path | None, download: bool) -> tuple[np.ndarray, ...]:
    root = resolve_data_dir(data_dir)
    if root is None:
        raise InputError(f"data set {spec.name!r} is read from a local folder: give --data-dir or set {DATA_DIR_ENV}",
                         hint=f"expected DIR/{spec.expected_files} (add --download to fetch it)")
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.torchvision_class)
    try:
        train = cls(root=str(root), train=True, download=download)
        test = cls(root=str(root), train=False, download=download)
    except (RuntimeError, OSError, ValueError, EOFError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{spec.name}: no usable data under {root} ({first})",
                         hint=f"expected {root}/{spec.expected_files}; add --download to fetch it") from err
    try:
        out = []
        for part in (train, test):
            data = part.data.numpy() if isinstance(part.data, torch.Tensor) else np.asarray(part.data)
            targets = part.targets.numpy() if isinstance(part.targets, torch.Tensor) else np.asarray(part.targets)
            out += [data, targets.astype(np.int64)]
    except Exception as err:  # a malformed folder can fail in many ways inside torchvision
        raise InputError(f"{spec.name}: malformed data under {root} ({err})",
                         hint=f"expected {root}/{spec.expected_files}") from err
    return tuple(out)


def load_dataset(name: str, data_dir: Path | None = None, download: bool = False, train_size: int | None = None) -> Dataset:
    """Load a registered data set by name (``synthetic:...`` takes generator options).

    Parameters
    ----------
    name : str
        A key of `DATASETS`, or ``synthetic:k=v,...``.
    data_dir : Path, optional
        Folder in torchvision's on-disk layout for the real data sets (else $MITOSIS_DATA_DIR).
    download : bool
        Let torchvision download a missing real data set (the only network access of the tool).
    train_size : int, optional
        Keep only the first `train_size` training samples (quick runs and tests).
    """
    key = name.split(":", 1)[0]
    if key not in DATASETS:
        raise InputError(f"unknown data set {name!r}", hint=f"choose one of: {', '.join(DATASETS)}")
    spec = DATASETS[key]
    if key == "synthetic":
        params = _parse_synthetic(name)
        train_x, train_y, test_x, test_y = builtin.hidden_manifold(**params)
        xs = [torch.from_numpy(train_x), torch.from_numpy(test_x)]
        num_classes = params.get("num_classes", spec.num_classes)
    else:
        if key == "mnist5k":
            if ":" in name:
                raise InputError(f"data set {key!r} takes no options")
            train_x, train_y, test_x, test_y = builtin.mnist5k()
        else:
            train_x, train_y, test_x, test_y = _load_torchvision(spec, data_dir, download)
        xs = [_images_to_tensor(train_x, spec.mean, spec.std), _images_to_tensor(test_x, spec.mean, spec.std)]
        num_classes = spec.num_classes
    if train_size is not None:
        if not 1 <= train_size <= len(train_y):
            raise InputError(f"--train-size {train_size} is outside 1..{len(train_y)} for {name}")
        xs[0], train_y = xs[0][:train_size], train_y[:train_size]
    return Dataset(
        name=name,
        train_x=xs[0],
        train_y=torch.from_numpy(np.asarray(train_y, dtype=np.int64)),
        test_x=xs[1],
        test_y=torch.from_numpy(np.asarray(test_y, dtype=np.int64)),
        num_classes=num_classes,
        augmentable=spec.augmentable,
    )
