"""The demo's plans: the paper's hyper-parameters for the presets, one folder per run, controls planned."""

import dataclasses
from pathlib import Path

import pytest

from mitosis_cli.stages.demo import CONTROLS, PLANS, PRESETS, DemoSettings, demo_steps, training_cost
from mitosis_cli.stages.extract import ExtractSettings
from mitosis_cli.stages.train import TrainSettings


def test_presets_use_the_paper_hyper_parameters(tmp_path: Path) -> None:
    for name in PRESETS:
        steps = demo_steps(DemoSettings(out=tmp_path, preset=name, data_dir=Path("/data"), controls=True))
        first = steps.train[0].settings
        assert isinstance(first, TrainSettings) and first.data_dir == Path("/data")
        cfg = first.config.resolved()
        assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.epochs, cfg.lr_min, cfg.momentum, cfg.augment, cfg.ending,
                cfg.optimizer, cfg.schedule) == (0.1, 5e-4, 128, 200, 1e-5, 0.9, True, "batchnorm", "sgd", "cosine"), name
    widths = {s.settings.config.width for s in demo_steps(DemoSettings(out=tmp_path, preset="wrn28-cifar10")).train}
    assert widths == {16, 32, 64, 128, 256, 512}
    assert all(w % 11 == 0 for w in PLANS["densenet40-cifar100"].seeds)


def test_the_demo_mlp_is_the_documented_one(tmp_path: Path) -> None:
    cfg = demo_steps(DemoSettings(out=tmp_path)).train[0].settings.config.resolved()
    assert (cfg.dataset, cfg.arch, cfg.depth, cfg.ending, cfg.weight_decay, cfg.lr, cfg.batch_size, cfg.epochs) == (
        "mnist5k", "mlp", 2, "batchnorm", 5e-3, 0.05, 128, 100)


def test_every_run_writes_its_own_folder_and_controls_are_planned(tmp_path: Path) -> None:
    plan = PLANS["default"]
    steps = demo_steps(DemoSettings(out=tmp_path, controls=True))
    runs = [one for s in steps.train for one in (
        [s.settings.for_seed(seed) for seed in s.settings.seeds] if s.settings.seeds else [s.settings])]
    outs = [one.out for one in runs]
    assert len(outs) == len(set(outs)) == sum(len(seeds) for seeds in plan.seeds.values()) + 2 * len(plan.seeds)
    assert {one.acts for one in runs} == {out / "acts.h5" for out in outs}
    # one training step per width of the main sweep (its seeds together) plus seed 0 of each width per trained control
    assert len(steps.train) == 3 * len(plan.seeds)
    assert sorted(s.settings.seeds for s in steps.train if s.settings.seeds) == sorted(
        seeds for seeds in plan.seeds.values() if len(seeds) > 1)
    untrained = [s.settings for s in steps.analysis if isinstance(s.settings, ExtractSettings)]
    assert len(untrained) == len(plan.seeds) and all(e.untrained for e in untrained)
    assert {s.stage for s in steps.analysis} == {"extract", "ensemble", "clones", "report"}
    clones_outs = [s.settings.out for s in steps.analysis if s.stage == "clones"]
    assert len(clones_outs) == len(set(clones_outs)) == 1 + len(CONTROLS)


def test_the_quick_plan_measures_seed_zero_of_each_width(tmp_path: Path) -> None:
    steps = demo_steps(DemoSettings(out=tmp_path, quick=True))
    clones = next(s.settings for s in steps.analysis if s.stage == "clones")
    assert [p.parent.name for p in clones.inputs] == ["w16-s0", "w64-s0", "w256-s0"]
    ensemble = next(s.settings for s in steps.analysis if s.stage == "ensemble")
    assert len(ensemble.inputs) == 8 and clones.ensemble == ensemble.out
    assert (clones.repeats, clones.acc_repeats, clones.ii_points, ensemble.repeats) == (10, 20, 500, 5)


def test_training_steps_start_largest_first(tmp_path: Path) -> None:
    steps = demo_steps(DemoSettings(out=tmp_path)).train
    costs = {s.name: training_cost(s.settings) for s in steps}
    assert max(costs, key=costs.__getitem__) == "w1024-s0-1"
    assert costs["w512-s0-1"] > costs["w256-s0-1"]
    sixteen = next(s.settings for s in steps if s.name == "w16-s0-15")
    fewer = dataclasses.replace(sixteen, seeds=sixteen.seeds[:8])
    shorter = dataclasses.replace(sixteen, config=dataclasses.replace(sixteen.config, epochs=50))
    assert training_cost(fewer) == pytest.approx(training_cost(sixteen) / 2) == training_cost(shorter)
