"""Training throughput: `mitosis train`'s loop against plain PyTorch loops with a DataLoader.

Same model, data, optimiser and batch size; all on the CPU with the same thread count. Our loop keeps
the data set as tensors on the device and slices shuffled index batches. Two references:

* ``textbook``: what a plain PyTorch script does with torchvision's MNIST class: a Dataset that turns
  each uint8 image into a PIL image, then ``ToTensor()`` + ``Normalize()``, batched by a DataLoader;
* ``tensors``: the best case for a DataLoader, TensorDataset over the already-normalised tensors.

Our timing includes the per-epoch evaluation on the whole train and test sets in eval mode (how the
run knows its training error), which neither reference does, so the ratios are conservative.

Run: OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_train.py --widths 256 1024 --epochs 5
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import transforms

from mitosis_cli.data import load_dataset
from mitosis_cli.data.builtin import mnist5k
from mitosis_cli.models.registry import build_model
from mitosis_cli.models.spec import ModelSpec
from mitosis_cli.training.config import TrainConfig
from mitosis_cli.training.loop import train_run


class PilMnist(Dataset):
    """Per-sample PIL + transforms, as torchvision.datasets.MNIST serves images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


def reference_loop(width: int, epochs: int, batch: int, kind: str) -> float:
    """Seconds for `epochs` epochs of a plain DataLoader loop (no evaluation)."""
    data = load_dataset("mnist5k")
    torch.manual_seed(0)
    model = build_model(ModelSpec("mlp", width, 2, "relu"), data.input_shape, data.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    if kind == "textbook":
        train_x, train_y, _, _ = mnist5k()
        dataset: Dataset = PilMnist(train_x, train_y)
    else:
        dataset = TensorDataset(data.train_x, data.train_y)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def mitosis_loop(width: int, epochs: int, batch: int) -> float:
    """Seconds of training epochs (with their evaluations) in `train_run`, from its history."""
    cfg = TrainConfig(width=width, epochs=epochs, batch_size=batch, lr=0.05, weight_decay=5e-3).resolved()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_run(cfg, Path(tmp) / "run")
    return sum(row["seconds"] for row in result.history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs of each")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = len(load_dataset("mnist5k").train_y)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"mnist5k ({n} train), MLP 784-W-W-10, batch {args.batch}, {args.epochs} epochs")
    print("| W | mitosis samples/s | textbook DataLoader samples/s | ratio | TensorDataset DataLoader samples/s | ratio |")
    print("|---|---|---|---|---|---|")
    for width in args.widths:
        rate = {}
        for name, run in (("ours", partial(mitosis_loop, width, args.epochs, args.batch)),
                          ("textbook", partial(reference_loop, width, args.epochs, args.batch, "textbook")),
                          ("tensors", partial(reference_loop, width, args.epochs, args.batch, "tensors"))):
            rate[name] = n * args.epochs / min(run() for _ in range(args.repeats))
        print(f"| {width} | {rate['ours']:,.0f} | {rate['textbook']:,.0f} | {rate['ours'] / rate['textbook']:.2f}x "
              f"| {rate['tensors']:,.0f} | {rate['ours'] / rate['tensors']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
