"""Seeds trained together (`train_seeds`) against the same seeds trained one by one (`train_run`)."""

import copy
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from mitosis_cli.errors import Preempted
from mitosis_cli.io.checkpoints import load_checkpoint
from mitosis_cli.models.registry import build_model
from mitosis_cli.models.spec import ModelSpec
from mitosis_cli.training.batched import (
    StackedNetworks,
    _seed_optimizer_state,
    _stack_optimizer_states,
    train_seeds,
    vmap_logits,
)
from mitosis_cli.training.config import TrainConfig
from mitosis_cli.training.loop import train_run
from tests.training.test_loop import StopAfter

# The demo's network (784-W-W-10, BatchNorm ending) on a small subset, trained to zero training error.
TINY = {"dataset": "mnist5k", "train_size": 256, "width": 16, "ending": "batchnorm", "batch_size": 32, "lr": 0.05,
        "weight_decay": 5e-3, "epochs": 3, "until_zero_error": True, "max_epochs": 40}
SEEDS = (0, 1, 2)


def _separate(cfg: TrainConfig, root: Path) -> dict:
    return {seed: train_run(TrainConfig(**{**cfg.to_dict(), "seed": seed}), root / f"single-s{seed}") for seed in SEEDS}


def test_seeds_trained_together_match_separate_runs(tmp_path: Path) -> None:
    cfg = TrainConfig(**TINY, save_epochs=[0, 2]).resolved()
    together = train_seeds(cfg, {seed: tmp_path / f"w16-s{seed}" for seed in SEEDS})
    alone = _separate(cfg, tmp_path)
    assert list(together) == list(SEEDS)
    zero_epochs = set()
    for seed in SEEDS:
        a, b = together[seed], alone[seed]
        # the tolerance: final test accuracy within 0.2 points, zero-training-error epoch within 1
        assert a.zero_error_epoch is not None and b.zero_error_epoch is not None
        assert abs(a.zero_error_epoch - b.zero_error_epoch) <= 1
        assert abs(a.final["test_error"] - b.final["test_error"]) * 100 <= 0.2
        # each network got its own gradients from the first step on (a mix-up of seeds shows in epoch 1)
        assert a.history[0]["train_loss"] == pytest.approx(b.history[0]["train_loss"], rel=1e-6)
        zero_epochs.add(a.zero_error_epoch)
        # the folder is what a single run writes
        run, single = tmp_path / f"w16-s{seed}", tmp_path / f"single-s{seed}"
        assert sorted(p.name for p in run.rglob("*")) == sorted(p.name for p in single.rglob("*"))
        assert (run / "config.json").read_text() == (single / "config.json").read_text()
        assert pq.read_table(run / "history.parquet").column_names == pq.read_table(single / "history.parquet").column_names
        ckpt = load_checkpoint(run / "checkpoint.pt")
        assert ckpt["finished"] and json.loads(ckpt["config"])["seed"] == seed and ckpt["epoch"] == a.epochs
        initial = load_checkpoint(run / "checkpoints" / "epoch-0000.pt")["model"]
        torch.manual_seed(seed)
        expected = build_model(cfg.model_spec, (1, 28, 28), 10).state_dict()
        assert all(torch.equal(initial[k], expected[k]) for k in expected)  # a single run's initialisation
    assert len(zero_epochs) > 1  # the seeds stopped at different epochs: finished seeds left the stack
    # a second call finds every seed finished
    assert all(r.skipped for r in train_seeds(cfg, {seed: tmp_path / f"w16-s{seed}" for seed in SEEDS}).values())


def test_preempted_seeds_resume_exactly_together_and_alone(tmp_path: Path) -> None:
    cfg = TrainConfig(**{**TINY, "until_zero_error": False, "epochs": 2}, seed=0).resolved()
    dirs = {seed: tmp_path / f"cut-s{seed}" for seed in SEEDS}
    full = train_seeds(cfg, {seed: tmp_path / f"full-s{seed}" for seed in SEEDS})
    with pytest.raises(Preempted, match="--resume"):
        train_seeds(cfg, dirs, stop=StopAfter(9))  # after 10 steps: mid-epoch 2 (8 steps per epoch)
    for seed in SEEDS:
        ckpt = load_checkpoint(dirs[seed] / "checkpoint.pt")
        assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["finished"]) == (1, 2, False)
    shutil.copytree(dirs[1], tmp_path / "alone-s1")
    resumed = train_seeds(cfg, dirs, resume=True)
    for seed in SEEDS:
        a = load_checkpoint(tmp_path / f"full-s{seed}" / "checkpoint.pt")["model"]
        b = load_checkpoint(dirs[seed] / "checkpoint.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), seed
        assert [r["train_loss"] for r in full[seed].history] == [r["train_loss"] for r in resumed[seed].history]
    # one seed's checkpoint is a single run's: `train --seed 1 --resume` continues it
    alone = train_run(TrainConfig(**{**cfg.to_dict(), "seed": 1}), tmp_path / "alone-s1", resume=True)
    assert alone.epochs == 2 and not alone.skipped
    _assert_close_weights(tmp_path / "full-s1", tmp_path / "alone-s1")
    # seeds at different points (finished, stopped mid-epoch, not started) each continue from where they are
    with pytest.raises(Preempted):
        train_seeds(cfg, {1: tmp_path / "mixed-s1"}, stop=StopAfter(3))
    shutil.copytree(tmp_path / "full-s0", tmp_path / "mixed-s0")
    mixed = train_seeds(cfg, {seed: tmp_path / f"mixed-s{seed}" for seed in SEEDS}, resume=True)
    assert [mixed[seed].skipped for seed in SEEDS] == [True, False, False]
    for seed in SEEDS:
        _assert_close_weights(tmp_path / f"full-s{seed}", tmp_path / f"mixed-s{seed}")


def _assert_close_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a / "checkpoint.pt")["model"], load_checkpoint(b / "checkpoint.pt")["model"]
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-4, atol=1e-6) for k in wa)


def _mlps(width: int, ending: str = "batchnorm") -> list[torch.nn.Module]:
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        models.append(build_model(ModelSpec("mlp", width, 2, ending), (1, 28, 28), 10))
    return models


@pytest.mark.parametrize("ending", ["batchnorm", "relu"])
def test_batched_mlp_equals_each_network_and_the_vmap_path(ending: str) -> None:
    models = _mlps(24, ending)
    net = StackedNetworks(models, torch.device("cpu"))
    other = copy.deepcopy(net.buffers)
    x, y = torch.randn(len(SEEDS), 40, 1, 28, 28), torch.randint(0, 10, (len(SEEDS), 40))
    logits = net.logits(x, train=True)
    by_vmap = vmap_logits(copy.deepcopy(models[0]).to("meta"), net.params, other, x, shared=False, train=True)
    F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1).sum().backward()
    for s, model in enumerate(models):
        model.train()
        out = model(x[s])
        F.cross_entropy(out, y[s]).backward()
        torch.testing.assert_close(logits[s], out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(by_vmap[s], out, rtol=1e-5, atol=1e-6)
        for name, p in model.named_parameters():
            torch.testing.assert_close(net.params[name].grad[s], p.grad, rtol=1e-5, atol=1e-7)
        for name, b in model.named_buffers():  # BatchNorm's running statistics, each network's own
            assert torch.equal(net.buffers[name][s], b)
            torch.testing.assert_close(other[name][s], b, rtol=1e-5, atol=1e-7)
    shared = torch.randn(50, 1, 28, 28)
    with torch.no_grad():
        evaluated = net.logits(shared, train=False, shared=True)
        for s, model in enumerate(models):
            torch.testing.assert_close(evaluated[s], model.eval()(shared), rtol=1e-5, atol=1e-6)


def test_optimizer_states_split_and_stack_back() -> None:
    models = _mlps(8)
    net = StackedNetworks(models, torch.device("cpu"))
    optimizer = torch.optim.Adam(net.params.values(), lr=0.01)
    net.logits(torch.randn(3, 6, 1, 28, 28), train=True).square().sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    per_seed = [_seed_optimizer_state(state, s) for s in range(len(SEEDS))]
    single = torch.optim.Adam(models[1].parameters(), lr=0.01)
    single.load_state_dict(per_seed[1])  # a single run's optimiser takes a seed's state
    assert single.state_dict()["state"][0]["exp_avg"].shape == models[1].body[0].weight.shape
    back = _stack_optimizer_states(per_seed)
    for key, entry in state["state"].items():
        assert all(torch.equal(value, back["state"][key][name]) for name, value in entry.items())


def test_wide_resnet_seeds_train_together_through_vmap(tmp_path: Path) -> None:
    cfg = TrainConfig(dataset="mnist5k", train_size=48, arch="wrn", width=16, depth=10, batch_size=16, epochs=1, lr=0.05,
                      weight_decay=5e-4, augment=False).resolved()
    together = train_seeds(cfg, {seed: tmp_path / f"s{seed}" for seed in SEEDS[:2]})
    for seed in SEEDS[:2]:
        alone = train_run(TrainConfig(**{**cfg.to_dict(), "seed": seed}), tmp_path / f"alone-s{seed}")
        a, b = together[seed].final, alone.final
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_error"] == pytest.approx(b["test_error"], abs=0.002)
