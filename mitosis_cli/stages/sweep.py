"""The sweep stage, the one planner: a grid of data sets x widths x seeds as the pipeline's stages.

`plan` expands a `Grid` into `Step`s, each a stage's settings (`TrainSettings`, `EnsembleSettings`,
`CloneSettings`, `ReportSettings`, or `ExtractSettings` for the demo's controls); `run_steps` runs
them here by calling the stages; `Step.shell` is the same step as one quoted `mitosis` command line
(for `--dry-run` and the SLURM scripts in `stages.slurm`). The demo is a sweep with its own defaults.
The seeds of a width train together, as one batched model (`mitosis train --seeds`): one training
step per data set and width.

Layout of a sweep folder OUT::

    OUT/<dataset>/w<W>-s<S>/          one training run per grid point (config.json, checkpoint.pt, ...)
    OUT/<dataset>/w<W>-s<S>/acts.h5   its last hidden layer
    OUT/<dataset>/[RESULTS/]ensemble.parquet, clones/, report/   the analysis of the data set
    OUT/logs/%A_%a.out                SLURM logs, one per array task
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mitosis_cli.errors import InputError, Preempted, exit_code
from mitosis_cli.io.paths import input_file
from mitosis_cli.stages.base import OnStep, StageSettings, no_progress
from mitosis_cli.stages.clones import CloneSettings, run_clones
from mitosis_cli.stages.ensemble import EnsembleSettings, run_ensemble
from mitosis_cli.stages.extract import run_extract
from mitosis_cli.stages.report import DEFAULT_TITLE, ReportSettings, run_report
from mitosis_cli.stages.train import SEED_FIELD, TrainSettings, run_train, seed_list

STAGES = ("train", "clones", "ensemble", "report")  # the stages a grid file may hold options for
ANALYSIS = ("ensemble", "clones", "report")  # per data set, in this order: clones reads error_inf from ensemble
PHASES = ("all", "train", "analysis")
GRID_KEYS = {"out", "dataset", "datasets", "widths", "seeds", *STAGES}


@dataclass(frozen=True)
class GridPoint:
    """One training run of the sweep."""

    dataset: str
    width: int
    seed: int

    @property
    def name(self) -> str:
        return f"w{self.width}-s{self.seed}"


@dataclass(frozen=True)
class Grid:
    """What a sweep covers, where it writes, and the settings each stage starts from.

    Attributes
    ----------
    out : Path
        The sweep folder (layout in the module docstring).
    datasets : tuple of str
        Data sets; each is a folder under `out`.
    seeds : mapping
        Width -> the seeds trained at that width.
    train, ensemble, clones, report : stage settings
        Templates: the sweep fills in each step's data set, width, seed, inputs and outputs.
    results : str
        Subfolder of OUT/<dataset> for the analysis outputs ("" for none; the demo names it after its plan).
    clone_seeds : int or None
        Seeds per width whose networks `clones` measures (None: all).
    analysis : tuple of str
        The analysis stages to run (ensemble only runs when some width has two or more seeds).
    """

    out: Path
    datasets: tuple[str, ...]
    seeds: Mapping[int, tuple[int, ...]]
    train: TrainSettings = field(default_factory=TrainSettings)
    ensemble: EnsembleSettings = field(default_factory=EnsembleSettings)
    clones: CloneSettings = field(default_factory=CloneSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    results: str = ""
    clone_seeds: int | None = None
    analysis: tuple[str, ...] = ANALYSIS

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted(self.seeds))

    def points(self, dataset: str | None = None) -> list[GridPoint]:
        """Every training run (of one data set), data set by data set, narrow first."""
        return [GridPoint(d, w, s) for d in self.datasets if dataset in (None, d) for w in self.widths for s in self.seeds[w]]

    def run_dir(self, point: GridPoint) -> Path:
        return self.out / point.dataset / point.name

    def acts(self, point: GridPoint) -> Path:
        return self.run_dir(point) / "acts.h5"

    def analysis_dir(self, dataset: str) -> Path:
        return self.out / dataset / self.results if self.results else self.out / dataset

    def measured(self, dataset: str) -> list[GridPoint]:
        """The grid points whose networks `clones` measures."""
        keep = self.clone_seeds
        return [p for p in self.points(dataset) if keep is None or p.seed in self.seeds[p.width][:keep]]


@dataclass(frozen=True)
class Step:
    """One stage run of the sweep: its settings, and the grid points it trains or reads alone."""

    phase: str  # "train" (one per data set and width, independent) or "analysis" (per data set, after all training)
    dataset: str
    settings: StageSettings
    points: tuple[GridPoint, ...] = ()

    @property
    def stage(self) -> str:
        return self.settings.stage

    @property
    def name(self) -> str:
        """The grid points as a run name: w16-s0, or w16-s0-15 for seeds trained together."""
        if not self.points:
            return ""
        return f"w{self.points[0].width}-s{seed_list(tuple(p.seed for p in self.points))}"

    def shell(self) -> str:
        """The step as one line of shell text, every word quoted."""
        return self.settings.command()

    def describe(self) -> dict[str, Any]:
        seeds = [p.seed for p in self.points]
        return {"phase": self.phase, "stage": self.stage, "dataset": self.dataset,
                "width": self.points[0].width if self.points else None, "seed": seeds[0] if len(seeds) == 1 else None,
                "seeds": seeds, "argv": ["mitosis", *self.settings.to_argv()], "command": self.shell()}


def train_step(grid: Grid, dataset: str, width: int) -> Step:
    """Training of every seed of `width` on `dataset`: one run, or the seeds together (`--seeds`) when several.

    `resume` continues interrupted runs and skips finished ones.
    """
    seeds = tuple(sorted(set(grid.seeds[width])))
    points = tuple(GridPoint(dataset, width, seed) for seed in seeds)
    if len(points) == 1:
        config = dataclasses.replace(grid.train.config, dataset=dataset, width=width, seed=seeds[0])
        settings = dataclasses.replace(grid.train, config=config, out=grid.run_dir(points[0]), acts=grid.acts(points[0]),
                                       resume=True)
    else:  # the seed in each path is filled in per seed (TrainSettings.for_seed gives grid.run_dir of each point)
        config = dataclasses.replace(grid.train.config, dataset=dataset, width=width)
        run_dir = grid.out / dataset / f"w{width}-s{SEED_FIELD}"
        settings = dataclasses.replace(grid.train, config=config, seeds=seeds, out=run_dir, acts=run_dir / "acts.h5",
                                       resume=True)
    return Step("train", dataset, settings, points)


def analysis_steps(grid: Grid, dataset: str) -> list[Step]:
    """The per-data-set stages, in order, once every grid point of `dataset` is trained.

    ensemble runs first so that clones can read error_inf from its table for the excess-error fit; it
    needs at least 2 seeds of a width, so a one-seed grid has no ensemble stage.
    """
    points, measured = grid.points(dataset), grid.measured(dataset)
    folder = grid.analysis_dir(dataset)
    ensemble_table = folder / "ensemble.parquet"
    with_ensemble = "ensemble" in grid.analysis and max(len(s) for s in grid.seeds.values()) >= 2
    steps = []
    if with_ensemble:
        steps.append(Step("analysis", dataset, dataclasses.replace(
            grid.ensemble, inputs=tuple(grid.acts(p) for p in points), out=ensemble_table)))
    if "clones" in grid.analysis:
        reads_ensemble = with_ensemble and grid.clones.error_inf is None and grid.clones.ensemble is None
        steps.append(Step("analysis", dataset, dataclasses.replace(
            grid.clones, inputs=tuple(grid.acts(p) for p in measured), out=folder / "clones",
            ensemble=ensemble_table if reads_ensemble else grid.clones.ensemble)))
    if "report" in grid.analysis:
        title = f"Representation mitosis: {dataset}" if grid.report.title == DEFAULT_TITLE else grid.report.title
        tables = (folder / "clones", *([ensemble_table] if with_ensemble else []),
                  *(grid.run_dir(p) / "history.parquet" for p in measured))
        steps.append(Step("analysis", dataset, dataclasses.replace(grid.report, tables=tables, out=folder / "report",
                                                                   title=title)))
    return steps


def plan(grid: Grid, phase: str = "all") -> list[Step]:
    """Every step of the sweep: the independent training steps first (one per data set and width), then each
    data set's analysis."""
    if phase not in PHASES:
        raise InputError(f"--phase {phase!r}: choose from {', '.join(PHASES)}")
    steps: list[Step] = []
    if phase in ("all", "train"):
        steps += [train_step(grid, dataset, width) for dataset in grid.datasets for width in grid.widths]
    if phase in ("all", "analysis"):
        for dataset in grid.datasets:
            steps += analysis_steps(grid, dataset)
    return steps


RUNNERS: dict[str, Callable[..., Any]] = {
    "train": run_train, "extract": run_extract, "ensemble": run_ensemble, "clones": run_clones, "report": run_report,
}


def run_step(step: Step, on_step: OnStep = no_progress) -> Any:
    """Run one step here, by calling its stage; return the stage's result."""
    return RUNNERS[step.stage](step.settings, on_step)


@dataclass
class SweepRun:
    """The steps a `run_steps` call ran (each with its exit code, whether its output was already current
    and its seconds) and the error that stopped it."""

    records: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.error is None else exit_code(self.error)


def run_steps(steps: list[Step], on_start: Callable[[int, int, Step], None] | None = None,
              on_step: OnStep = no_progress) -> SweepRun:
    """Run the steps here, in order; stop at the first failure and keep its error (the caller re-raises it).

    Every step's settings are checked first (`StageSettings.check`), so an option out of range stops the
    sweep before its first step writes anything.
    """
    for step in steps:
        step.settings.check()
    run = SweepRun()
    for number, step in enumerate(steps, 1):
        if on_start is not None:
            on_start(number, len(steps), step)
        started = time.perf_counter()
        skipped = None
        try:
            skipped = run_step(step, on_step).skipped
        except (Exception, KeyboardInterrupt, Preempted) as err:  # noqa: BLE001 - recorded with its exit code, re-raised by the caller
            run.error = err
        run.records.append({**step.describe(), "exit_code": run.exit_code, "skipped": skipped,
                            "seconds": round(time.perf_counter() - started, 3)})
        if run.error is not None:
            break
    return run


def check_dataset_name(name: str) -> str:
    """A data set name becomes a folder name: refuse those that would escape or nest folders."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise InputError(f"data set {name!r}: cannot be used as a folder name under the sweep's output")
    return name


def load_grid_file(path: Path) -> dict[str, Any]:
    """Read a TOML (.toml) or JSON grid file into a dict, checking its keys and stage tables."""
    try:
        raw = input_file(path, "a grid file (.toml or .json)").read_bytes()
    except InputError as err:
        raise InputError(f"cannot read the grid file: {err}") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read the grid file: {err.strerror or err}") from None
    is_toml = path.suffix.lower() == ".toml"
    try:
        if is_toml:
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # the same parser, from the package index
                import tomli as tomllib
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a valid {'TOML' if is_toml else 'JSON'} grid file: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a grid file holds a table/object at the top level")
    unknown = sorted(set(data) - GRID_KEYS)
    if unknown:
        raise InputError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(GRID_KEYS))})")
    for stage in STAGES:
        if stage in data and not isinstance(data[stage], dict):
            raise InputError(f"{path}: [{stage}] must be a table of option = value")
    return data
