"""The demo stage: representation mitosis shown end to end, a sweep with good defaults plus the paper's controls.

A demo plan is a `Grid` (stages/sweep.py): widths with their seeds, and templates for the stages.
Training runs one step per width (its seeds trained together as one batched model) in parallel worker
processes (spawned: no OpenMP state inherited), the largest first; the analysis runs here, stage by
stage; every stage skips what is already current, so a second run reuses what is done. The verdict on
the paper's claims comes from the tables the pipeline wrote (`analysis.claims`). Outputs::

    OUT/<dataset>/w<W>-s<S>/                 the training runs, shared by every plan
    OUT/<dataset>/<plan>/                    ensemble.parquet, clones/, report/, demo-summary.json
    OUT/controls/<control>/<dataset>/...     the controls (--controls), the same layout
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mitosis_cli.analysis.claims import Claim, clone_sizes, critical_width, evaluate_claims, residual_noise
from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import network_label
from mitosis_cli.io.atomic import atomic_path, output_lock
from mitosis_cli.runtime import StopFlag, default_threads, pick_device
from mitosis_cli.stages.base import OnStep, Progress, StageSettings, no_progress, option_words
from mitosis_cli.stages.clones import CloneSettings
from mitosis_cli.stages.ensemble import EnsembleSettings
from mitosis_cli.stages.extract import ExtractSettings
from mitosis_cli.stages.report import ReportSettings
from mitosis_cli.stages.sweep import Grid, GridPoint, Step, analysis_steps, plan, run_step
from mitosis_cli.stages.train import TrainSettings, run_train, seed_list
from mitosis_cli.training.config import TrainConfig


@dataclass(frozen=True)
class DemoPlan:
    """What a demo trains (width -> seeds) and the settings its stages start from."""

    name: str
    seeds: Mapping[int, tuple[int, ...]]
    train: TrainConfig
    description: str
    clones: CloneSettings = field(default_factory=CloneSettings)
    ensemble: EnsembleSettings = field(default_factory=EnsembleSettings)


def _seeds(counts: Mapping[int, int]) -> dict[int, tuple[int, ...]]:
    return {w: tuple(range(n)) for w, n in counts.items()}


# The regime the demo sits in (docs/results.md maps it): an MLP 784-W-W-10 whose last hidden layer ends in
# a BatchNorm without ReLU, as the paper's CNNs do, trained past zero training error with the built-in
# data's defaults (SGD, lr 0.05, weight decay 5e-3, batch 128, cosine, 100 epochs: TrainConfig.resolved).
_MLP = TrainConfig(dataset="mnist5k", arch="mlp", depth=2, ending="batchnorm", epochs=100)
# Many seeds of the narrow widths: they are the members of the ensembles that the wide nets face.
PLANS: dict[str, DemoPlan] = {
    "default": DemoPlan("default", _seeds({16: 16, 32: 8, 64: 4, 128: 3, 256: 2, 512: 2, 1024: 2}), _MLP,
                        "MLPs of 7 widths (16-1024), 37 networks, on the built-in MNIST subset"),
    "quick": DemoPlan("quick", _seeds({16: 4, 64: 2, 256: 2}), _MLP, "MLPs of 3 widths (16-256), 8 networks, fewer repeats",
                      CloneSettings(repeats=10, acc_repeats=20, ii_points=500), EnsembleSettings(repeats=5)),
}
# The paper's GPU setups (Doimo et al. 2022, Sec. 2) use the CIFAR defaults of TrainConfig.resolved: SGD
# momentum 0.9, lr 0.1, weight decay 5e-4, batch 128, 200 epochs, cosine to 1e-5, random crop + flip.
for _data in ("cifar10", "cifar100"):
    PLANS[f"wrn28-{_data}"] = DemoPlan(
        f"wrn28-{_data}", _seeds({16: 10, 32: 10, 64: 10, 128: 5, 256: 5, 512: 5}),
        TrainConfig(dataset=_data, arch="wrn", depth=28, ending="batchnorm"),
        f"Wide-ResNet-28-k (k = 0.25-8, W = 16-512) on {_data}, the paper's hyper-parameters")
    PLANS[f"densenet40-{_data}"] = DemoPlan(
        f"densenet40-{_data}", _seeds({44: 10, 88: 10, 176: 5, 352: 5, 528: 5}),
        TrainConfig(dataset=_data, arch="densenet", depth=40, ending="batchnorm"),
        f"DenseNet-BC-40 (growth 4-48, W = 11g = 44-528) on {_data}, the paper's hyper-parameters")
PRESETS = tuple(name for name in PLANS if name not in ("default", "quick"))

# Controls the paper uses to argue the mechanism, each on seed 0 of every width.
CONTROLS = ("no-weight-decay", "early-stop", "untrained")
CONTROL_EARLY_EPOCHS = 2  # stopped well before zero training error


@dataclass(frozen=True)
class DemoSettings(StageSettings):
    """Options of `mitosis demo`."""

    stage = "demo"
    out: Path = Path("mitosis-demo")
    quick: bool = False
    preset: str | None = None
    data_dir: Path | None = None
    controls: bool = False
    epochs: int | None = None
    jobs: int | None = None
    device: str = "auto"
    threads: int | None = None

    def to_argv(self) -> list[str]:
        return ["demo", *option_words([
            ("out", self.out), ("quick", self.quick or None), ("preset", self.preset), ("data-dir", self.data_dir),
            ("controls", self.controls or None), ("epochs", self.epochs), ("jobs", self.jobs),
            ("device", None if self.device == "auto" else self.device), ("threads", self.threads)])]

    def plan(self) -> DemoPlan:
        """The plan these settings select (with `epochs` applied)."""
        if self.quick and self.preset:
            raise InputError("--quick and --preset exclude each other")
        if self.preset is not None and self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r}", hint=f"choose one of: {', '.join(PRESETS)}")
        chosen = PLANS[self.preset or ("quick" if self.quick else "default")]
        if self.epochs is not None:
            chosen = dataclasses.replace(chosen, train=dataclasses.replace(chosen.train, epochs=self.epochs))
        return chosen


def demo_grid(settings: DemoSettings, chosen: DemoPlan) -> Grid:
    """The demo's main sweep: every width and seed of the plan, analysed under OUT/<dataset>/<plan>/."""
    train = TrainSettings(config=chosen.train, data_dir=settings.data_dir, device=settings.device, threads=settings.threads)
    clones = dataclasses.replace(chosen.clones, device=settings.device, threads=settings.threads)
    report = ReportSettings(title=f"mitosis demo ({chosen.name}): {chosen.description}")
    return Grid(settings.out, (chosen.train.dataset,), chosen.seeds, train=train, ensemble=chosen.ensemble, clones=clones,
                report=report, results=chosen.name, clone_seeds=1)


def control_grid(main: Grid, control: str) -> Grid:
    """A control's sweep: seed 0 of every width under OUT/controls/<control>/, measured by clones only."""
    config = main.train.config
    if control == "no-weight-decay":
        config = dataclasses.replace(config, weight_decay=0.0)
    elif control == "early-stop":
        config = dataclasses.replace(config, epochs=CONTROL_EARLY_EPOCHS)
    return dataclasses.replace(main, out=main.out / "controls" / control, seeds=dict.fromkeys(main.widths, (0,)),
                               train=dataclasses.replace(main.train, config=config), analysis=("clones",))


@dataclass(frozen=True)
class DemoSteps:
    """Everything a demo runs: the independent training runs, then the analysis in order."""

    train: list[Step]
    analysis: list[Step]
    grid: Grid
    plan: DemoPlan


def demo_steps(settings: DemoSettings) -> DemoSteps:
    """The demo's steps: its sweep, then (with `settings.controls`) each control's."""
    chosen = settings.plan()
    grid = demo_grid(settings, chosen)
    train, analysis = plan(grid, "train"), plan(grid, "analysis")
    if settings.controls:
        for control in CONTROLS:
            other = control_grid(grid, control)
            if control == "untrained":  # the seeded initialisation of the main runs' architecture
                for point in other.points():
                    source = grid.run_dir(GridPoint(point.dataset, point.width, 0))
                    analysis.append(Step("analysis", point.dataset, ExtractSettings(
                        source=source, out=other.acts(point), untrained=True, data_dir=settings.data_dir,
                        device=settings.device, threads=settings.threads), (point,)))
            else:
                train += plan(other, "train")
            analysis += [step for dataset in other.datasets for step in analysis_steps(other, dataset)]
    return DemoSteps(train, analysis, grid, chosen)


# A seed costs about this many parameters' worth of work beyond its network's arithmetic: per step, the gather of
# its batch and the small kernels; per epoch, its checkpoint and history writes. With it, the cost of each of the
# demo's seven steps is proportional to its measured CPU time within 15 % (docs/results.md, "Run time").
SEED_OVERHEAD_PARAMETERS = 25_000


def training_cost(settings: TrainSettings) -> float:
    """Relative CPU work of a training step, to order steps by: epochs x seeds x (parameters + seed overhead)."""
    from mitosis_cli.data import DATASETS  # torch: loaded when the demo trains, not for --help
    from mitosis_cli.models.registry import count_parameters

    cfg = settings.config.resolved()
    spec = DATASETS.get(cfg.dataset.partition(":")[0])
    shape, classes = (spec.input_shape, spec.num_classes) if spec else ((1, 28, 28), 10)
    return float(cfg.epochs) * max(1, len(settings.seeds)) * (count_parameters(cfg.model_spec, shape, classes)
                                                             + SEED_OVERHEAD_PARAMETERS)


def _train_in_worker(settings: TrainSettings) -> bool:
    """One training step in a worker process (its threads set, stopped cleanly by SIGTERM); True when skipped."""
    return run_train(settings, stop=StopFlag()).skipped


def train_all(steps: list[Step], workers: int, cores: int | None = None, on_step: OnStep = no_progress) -> list[bool]:
    """Run the training steps, on up to `workers` spawned processes; the first failure stops them.

    The steps start largest first (`training_cost`), so that the long ones do not start last. With fewer
    steps than `workers`, each process gets more of the `cores` (default: `workers`) as torch threads.
    Returns each step's `skipped` (the run was already finished), in the order of `steps`.
    """
    skipped: dict[int, bool] = {}
    workers = max(1, min(workers, len(steps)))

    def report(index: int) -> None:
        settings = steps[index].settings
        assert isinstance(settings, TrainSettings)  # the training steps of a plan
        config = settings.config.resolved()
        seeds = f"s{seed_list(settings.seeds)}" if settings.seeds else f"s{config.seed}"
        name = f"{network_label(config.model_spec.family, config.width, dataset=config.dataset)} {seeds}"
        unit = "step" if settings.seeds else "run"
        on_step(Progress("train", len(skipped), len(steps), f"{name} {'was' if skipped[index] else 'now'} trained", unit=unit))

    if workers == 1:
        for index, step in enumerate(steps):
            skipped[index] = run_step(step).skipped
            report(index)
        return [skipped[i] for i in range(len(steps))]
    threads = max(1, (cores or workers) // workers)
    order = sorted(range(len(steps)), key=lambda i: -training_cost(steps[i].settings))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_train_in_worker, dataclasses.replace(steps[i].settings, threads=threads)): i for i in order}
        for future in as_completed(futures):
            try:
                skipped[futures[future]] = future.result()
            except BaseException:
                for other in futures:
                    other.cancel()
                raise
            report(futures[future])
    return [skipped[i] for i in range(len(steps))]


@dataclass(frozen=True)
class DemoResult:
    """The demo's verdict: the claims, the clone sizes, the residual noise and the controls."""

    plan: str
    out: Path
    report: Path
    summary: Path
    claims: list[Claim]
    clone_sizes: dict[int, float]
    noise: dict[str, Any]  # widest, chunk, one_minus_r2 (1 - R^2 of chunks twice the clone size)
    controls: dict[str, Any]
    steps: list[dict[str, Any]]  # stage, command, skipped (the output was already current)
    regimes: dict[int, str] = field(default_factory=dict)  # width -> regime word (`analysis.collapse.regime`)

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan, "out": str(self.out), "report": str(self.report / "index.html"),
                "claims": [{"key": c.key, "statement": c.statement, "verdict": c.verdict, "holds": c.holds,
                            "evidence": c.evidence, "numbers": c.numbers} for c in self.claims],
                "clone_size": self.clone_sizes, "noise": self.noise, "regimes": self.regimes, "controls": self.controls,
                "steps": self.steps}


def _noise(rows: list[dict[str, Any]], sizes: dict[int, float]) -> dict[str, Any]:
    """How much of the widest layer a chunk twice the clone size leaves unexplained: noise, or none."""
    if not sizes:
        return {}
    widest = max(sizes)
    chunk = next((c for c in (16, 32, 64, 128, 256, 512) if c >= 2 * sizes[widest]), None)
    value = residual_noise(rows, widest, chunk) if chunk and chunk < widest else None
    return {} if value is None else {"widest": widest, "chunk": chunk, "one_minus_r2": value}


def _control_verdict(clones_folder: Path) -> dict[str, Any]:
    rows = pq.read_table(clones_folder / "clones-summary.parquet").to_pylist()
    sizes = clone_sizes(rows)
    return {"clone_size": sizes, "critical_width": critical_width(rows),
            "text": "w_c* " + ", ".join(f"W={w}: {c:.0f}" for w, c in sizes.items())}


def run_demo(settings: DemoSettings, on_step: OnStep = no_progress,
             on_start: Callable[[int, int, Step], None] | None = None) -> DemoResult:
    """`mitosis demo`: train, measure, report, and judge the paper's claims (see `analysis.claims`)."""
    steps = demo_steps(settings)
    grid = steps.grid
    cores = settings.threads or default_threads()
    workers = 1 if pick_device(settings.device).type == "cuda" else (settings.jobs or cores)
    skipped = train_all(steps.train, workers, cores, on_step)
    for number, step in enumerate(steps.analysis, 1):
        if on_start is not None:
            on_start(number, len(steps.analysis), step)
        skipped.append(run_step(step, on_step).skipped)
    records = [{"stage": step.stage, "command": step.shell(), "skipped": was_skipped}
               for step, was_skipped in zip([*steps.train, *steps.analysis], skipped, strict=True)]
    dataset = grid.datasets[0]
    folder = grid.analysis_dir(dataset)
    rows = pq.read_table(folder / "clones" / "clones-summary.parquet").to_pylist()
    claims = evaluate_claims(rows, pq.read_table(folder / "ensemble.parquet").to_pylist())
    controls = {}
    if settings.controls:
        controls = {name: _control_verdict(control_grid(grid, name).analysis_dir(dataset) / "clones") for name in CONTROLS}
    sizes = clone_sizes(rows)
    regimes = {int(r["width"]): str(r["status"]) for r in rows if r["metric"] == "regime" and r.get("status")}
    result = DemoResult(steps.plan.name, settings.out, folder / "report", folder / "demo-summary.json", claims, sizes,
                        _noise(rows, sizes), controls, records, dict(sorted(regimes.items())))
    with output_lock(result.summary), atomic_path(result.summary) as tmp:
        tmp.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True, default=str) + "\n")
    return result
