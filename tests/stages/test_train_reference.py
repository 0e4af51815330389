"""`train` end to end: every number of history.parquet recomputed from the weights the run saved, through
the Python API and the command line.

A tiny MLP (20 inputs -> 12 -> 12, last hidden layer ending in a BatchNorm) trains for 3 epochs on 193
synthetic samples in batches of 48 (4 steps an epoch: the final batch of one sample is dropped), with
``--save-epochs 1,2,3``. Each history row must be the saved weights' cross-entropy and error on the
whole train and test sets in eval mode (running BatchNorm statistics), computed here with a forward
pass written from the state dict, and its lr the cosine schedule at the epoch's last step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import mitosis_cli as mitosis
from mitosis_cli.cli.app import main
from mitosis_cli.data import load_dataset

DATASET = "synthetic:n=300,test=120,d=20,latent=4,classes=3,seed=2"
TRAIN_SIZE, WIDTH, EPOCHS, BATCH, LR, LR_MIN = 193, 12, 3, 48, 0.08, 0.002
STEPS_PER_EPOCH = 4  # 193 = 4 * 48 + 1: the one-sample remainder is dropped


def config() -> mitosis.TrainConfig:
    return mitosis.TrainConfig(dataset=DATASET, train_size=TRAIN_SIZE, arch="mlp", width=WIDTH, depth=2, ending="batchnorm",
                               epochs=EPOCHS, batch_size=BATCH, lr=LR, lr_min=LR_MIN, seed=3, save_epochs=[1, 2, 3])


def train(how: str, run: Path) -> None:
    if how == "api":
        mitosis.run_train(mitosis.TrainSettings(config=config(), out=run, device="cpu", threads=1))
        return
    assert main(["train", "--dataset", DATASET, "--train-size", str(TRAIN_SIZE), "--width", str(WIDTH), "--depth", "2",
                 "--ending", "batchnorm", "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", str(LR),
                 "--lr-min", str(LR_MIN), "--seed", "3", "--save-epochs", "1,2,3", "-o", str(run), "--device", "cpu",
                 "--threads", "1", "-q"]) == 0


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in torch.load(path, map_location="cpu", weights_only=True)["model"].items()}


def forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden layer and logits in eval mode: Linear, ReLU, Linear, BatchNorm (running statistics), head."""
    h = torch.relu(x.flatten(1).double() @ state["body.0.weight"].T + state["body.0.bias"])
    z = h @ state["body.2.weight"].T + state["body.2.bias"]
    features = ((z - state["body.3.running_mean"]) / torch.sqrt(state["body.3.running_var"] + 1e-5)
                * state["body.3.weight"] + state["body.3.bias"])
    return features, features @ state["head.weight"].T + state["head.bias"]


def loss_and_error(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    _, logits = forward(state, x)
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return float(-log_p[torch.arange(len(y)), y].mean()), float((logits.argmax(1) != y).double().mean())


def cosine(step: int, total: int) -> float:
    return LR_MIN + (LR - LR_MIN) * (1 + math.cos(math.pi * step / total)) / 2


@pytest.mark.parametrize("how", ["api", "cli"])
def test_history_is_recomputed_from_the_saved_weights(how: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(how, run)
    history = pq.read_table(run / "history.parquet").to_pylist()
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    data = load_dataset(DATASET, train_size=TRAIN_SIZE)
    assert len(data.train_y) == TRAIN_SIZE
    total = STEPS_PER_EPOCH * EPOCHS
    for row in history:
        state = state_dict(run / "checkpoints" / f"epoch-{row['epoch']:04d}.pt")
        train_loss, train_error = loss_and_error(state, data.train_x, data.train_y)
        test_loss, test_error = loss_and_error(state, data.test_x, data.test_y)
        assert row["train_loss"] == pytest.approx(train_loss, rel=1e-5), row
        assert row["test_loss"] == pytest.approx(test_loss, rel=1e-5), row
        assert row["train_error"] == pytest.approx(train_error, abs=1e-12), row
        assert row["test_error"] == pytest.approx(test_error, abs=1e-12), row
        assert row["lr"] == pytest.approx(cosine(row["epoch"] * STEPS_PER_EPOCH - 1, total), rel=1e-12), row
        assert row["seconds"] > 0
    assert history[0]["train_loss"] > history[-1]["train_loss"], "it trained"
    assert len({row["test_loss"] for row in history}) == EPOCHS and len({row["lr"] for row in history}) == EPOCHS
    # the last snapshot is the final weights, and the final checkpoint holds the same history
    final = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    last = state_dict(run / "checkpoints" / f"epoch-{EPOCHS:04d}.pt")
    assert all(torch.equal(final["model"][k].double(), last[k]) for k in last)
    saved = json.loads(final["history"])
    assert len(saved) == len(history)
    for a, b in zip(saved, history, strict=True):  # the table adds the network's identity (arch, dataset, width, seed)
        assert a == pytest.approx({key: b[key] for key in a})
    # the recorded config is the one asked for
    assert {k: v for k, v in json.loads((run / "config.json").read_text()).items()
            if k in ("dataset", "width", "epochs", "batch_size", "lr", "lr_min", "seed")} == {
        "dataset": DATASET, "width": WIDTH, "epochs": EPOCHS, "batch_size": BATCH, "lr": LR, "lr_min": LR_MIN, "seed": 3}
