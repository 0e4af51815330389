"""The training loop: reaches zero training error, records history, and resumes bit-exactly."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from mitosis_cli.errors import InputError, Preempted
from mitosis_cli.io.checkpoints import load_checkpoint
from mitosis_cli.runtime import StopFlag
from mitosis_cli.training.config import TrainConfig
from mitosis_cli.training.loop import train_run
from mitosis_cli.training.schedule import learning_rate

SMALL = {"dataset": "mnist5k", "train_size": 256, "width": 32, "batch_size": 32, "lr": 0.05, "weight_decay": 5e-4}


class StopAfter(StopFlag):
    """A stop flag that 'receives SIGTERM' after a given number of optimiser steps."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self._left = steps

    @property
    def signal(self) -> int | None:
        self._left -= 1
        return 15 if self._left < 0 else None

    @signal.setter
    def signal(self, value: int | None) -> None:  # the base class resets it
        pass


def test_reaches_zero_training_error_and_writes_history(tmp_path: Path) -> None:
    cfg = TrainConfig(**SMALL, epochs=3, until_zero_error=True, max_epochs=60, save_epochs=[0, 2]).resolved()
    result = train_run(cfg, tmp_path / "run")
    assert result.zero_error_epoch is not None and result.final["train_error"] == 0.0
    assert result.epochs == result.zero_error_epoch >= 3  # kept going after the schedule, stopped at zero
    table = pq.read_table(tmp_path / "run" / "history.parquet").to_pydict()
    assert table["epoch"] == list(range(1, result.epochs + 1))
    assert set(table) == {"epoch", "lr", "train_loss", "train_error", "test_loss", "test_error", "seconds",
                          "arch", "dataset", "width", "seed"}
    assert {(a, d, w, s) for a, d, w, s in zip(table["arch"], table["dataset"], table["width"], table["seed"], strict=True)} == {
        (cfg.model_spec.family, cfg.dataset, cfg.width, cfg.seed)}
    assert all(0 <= e <= 1 for e in table["test_error"])
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["epoch-0000.pt", "epoch-0002.pt"]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["finished"]


def test_resume_after_preemption_gives_identical_weights(tmp_path: Path) -> None:
    cfg = TrainConfig(**SMALL, epochs=3, seed=7).resolved()
    full = train_run(cfg, tmp_path / "full")
    with pytest.raises(Preempted, match="--resume"):
        train_run(cfg, tmp_path / "cut", stop=StopAfter(5))  # after 6 steps: mid-epoch 1 (8 steps per epoch)
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["finished"]) == (0, 6, False)
    with pytest.raises(InputError, match="unfinished run"):
        train_run(cfg, tmp_path / "cut")
    resumed = train_run(cfg, tmp_path / "cut", resume=True)
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in resumed.history]


def test_finished_run_is_reused_and_changed_options_refused(tmp_path: Path) -> None:
    cfg = TrainConfig(**SMALL, epochs=1).resolved()
    train_run(cfg, tmp_path / "run")
    assert train_run(cfg, tmp_path / "run").skipped
    other = TrainConfig(**{**SMALL, "width": 64}, epochs=1).resolved()
    with pytest.raises(InputError, match="other options \\(width\\)"):
        train_run(other, tmp_path / "run")
    assert not train_run(other, tmp_path / "run", force=True).skipped


def test_cosine_schedule() -> None:
    assert learning_rate(0, 100, 0.1, 1e-5, "cosine") == pytest.approx(0.1)
    assert learning_rate(50, 100, 0.1, 1e-5, "cosine") == pytest.approx((0.1 + 1e-5) / 2)
    assert learning_rate(99, 100, 0.1, 1e-5, "cosine") == pytest.approx(1e-5, abs=1e-4)
    assert learning_rate(500, 100, 0.1, 1e-5, "cosine") == pytest.approx(1e-2)  # extra epochs: 10% of the peak
    assert learning_rate(37, 100, 0.1, 0.0, "constant") == 0.1


def test_paper_defaults_for_cifar() -> None:
    cfg = TrainConfig(dataset="cifar10", arch="wrn", width=512).resolved()
    assert (cfg.lr, cfg.weight_decay, cfg.epochs, cfg.batch_size, cfg.lr_min, cfg.augment) == (0.1, 5e-4, 200, 128, 1e-5, True)
    assert (cfg.depth, cfg.ending, cfg.momentum) == (28, "batchnorm", 0.9)
