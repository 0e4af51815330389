"""Training throughput: `mitosis train`'s loop against plain PyTorch loops, and seeds trained together (`--demo`).

Default: same model, data, optimiser and batch size; all on the CPU with the same thread count. Our loop
keeps the data set as tensors on the device and slices shuffled index batches. Two references:

* ``textbook``: what a plain PyTorch script does with torchvision's MNIST class: a Dataset that turns
  each uint8 image into a PIL image, then ``ToTensor()`` + ``Normalize()``, batched by a DataLoader;
* ``tensors``: the best case for a DataLoader, TensorDataset over the already-normalised tensors.

Our timing includes the per-epoch evaluation on the whole train and test sets in eval mode (how the
run knows its training error), which neither reference does, so the ratios are conservative.

``--demo``: every training configuration of `mitosis demo` (the MLP 784-W-W-10 with a BatchNorm ending,
with the plan's seeds per width), trained as separate runs (`train_run`, one per seed) and as one
batched model (`train_seeds`), one thread. Per configuration: training samples per second of wall time
(the epoch times in history.parquet: training steps and the per-epoch evaluation of both splits) and
per CPU second of the whole call (set-up and checkpoint/history writes included; on a shared machine the
CPU seconds are the robust measure), the arithmetic rate of the linear layers' products per CPU second
(forward and backward of training, forward of evaluation; 2 flops per multiply-add) and its fraction of
torch.mm's rate on 2048 x 2048 float32 matrices measured at the start of the same run, and whether the
batched weights equal the separate runs' bit for bit.

Run: OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_train.py --widths 256 1024 --epochs 5
     OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_train.py --demo --epochs 5
"""

from __future__ import annotations

import argparse
import dataclasses
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
from mitosis_cli.io.checkpoints import load_checkpoint
from mitosis_cli.models.registry import build_model
from mitosis_cli.models.spec import ModelSpec
from mitosis_cli.stages.demo import PLANS
from mitosis_cli.training.batched import train_seeds
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


def gemm_rate(size: int = 2048, repeats: int = 5) -> float:
    """FLOP per CPU second of torch.mm on two size x size float32 matrices (best of `repeats`), one thread."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        torch.mm(a, b)
        best = min(best, time.process_time() - start)
    return 2 * size**3 / best


def model_flops(model: torch.nn.Module, n_train: int, n_test: int) -> float:
    """Flops of one epoch of an MLP's linear layers: training forward + backward (no input gradient of the first
    layer) on the training set, evaluation forward on both splits; 2 flops per multiply-add."""
    sizes = [m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    forward = sum(sizes)
    return 2.0 * (n_train * (3 * forward - sizes[0]) + (n_train + n_test) * forward)


def demo_configurations(epochs: int, plan: str) -> None:
    """Separate runs against seeds trained together, for every (width, seeds) of a demo plan."""
    data = load_dataset("mnist5k")
    n_train, n_test = len(data.train_y), len(data.test_y)
    peak = gemm_rate()
    load = os.getloadavg()[0]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"torch.mm 2048x2048 float32: {peak / 1e9:.1f} GFLOP per CPU-s; load average {load:.2f}")
    print(f"# mnist5k ({n_train} train, {n_test} test), demo plan {plan!r}: MLP 784-W-W-10, BatchNorm ending, batch 128, "
          f"{epochs} epochs. samples/s: seeds x {n_train} x epochs / the epochs' wall seconds (history.parquet); "
          "per CPU-s: over the CPU seconds of the whole call (set-up and checkpoint/history writes included); "
          "GFLOP per CPU-s of the linear layers, and its fraction of torch.mm's")
    print("| W | seeds | separate: samples/s | samples/CPU-s | GFLOP/CPU-s | of GEMM | together: samples/s | samples/CPU-s "
          "| GFLOP/CPU-s | of GEMM | speed-up: wall | CPU | bit-identical |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    train_run(dataclasses.replace(PLANS[plan].train, width=16, epochs=1, train_size=256).resolved(),
              Path(tempfile.mkdtemp()) / "warm-up")  # first-call imports (torch.optim loads torch._dynamo) not timed
    for width, seeds in PLANS[plan].seeds.items():
        cfg = dataclasses.replace(PLANS[plan].train, width=width, epochs=epochs).resolved()
        flops = model_flops(build_model(cfg.model_spec, data.input_shape, data.num_classes), n_train, n_test) * epochs
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            start = time.process_time()  # CPU seconds of this process: robust to other jobs on a shared machine
            alone = {s: train_run(dataclasses.replace(cfg, seed=s), root / f"alone-s{s}") for s in seeds}
            alone_cpu = time.process_time() - start
            start = time.process_time()
            together = train_seeds(cfg, {s: root / f"together-s{s}" for s in seeds})
            together_cpu = time.process_time() - start
            identical = all(_same_weights(root / f"alone-s{s}", root / f"together-s{s}") for s in seeds)
        alone_s = sum(row["seconds"] for r in alone.values() for row in r.history)
        together_s = sum(row["seconds"] for row in next(iter(together.values())).history)
        work = len(seeds) * flops
        samples = len(seeds) * n_train * epochs
        rates = [f"{samples / t:,.0f} | {samples / cpu:,.0f} | {work / cpu / 1e9:.1f} | {work / cpu / peak:.2f}"
                 for t, cpu in ((alone_s, alone_cpu), (together_s, together_cpu))]
        same = "yes" if identical else "no"
        speed_up = f"{alone_s / together_s:.2f}x | {alone_cpu / together_cpu:.2f}x"
        print(f"| {width} | {len(seeds)} | {rates[0]} | {rates[1]} | {speed_up} | {same} |", flush=True)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a / "checkpoint.pt")["model"], load_checkpoint(b / "checkpoint.pt")["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs of each")
    parser.add_argument("--demo", action="store_true", help="the demo's configurations: separate runs vs seeds together")
    parser.add_argument("--plan", default="default", help="with --demo: the demo plan (default or quick)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.demo:
        demo_configurations(args.epochs, args.plan)
        return
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
