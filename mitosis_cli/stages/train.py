"""The train stage: train one network into a run directory (or several seeds together, one directory each), and
extract its activations if asked."""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import network_label
from mitosis_cli.io.paths import lies_inside, output_path
from mitosis_cli.runtime import pick_device, set_threads
from mitosis_cli.stages.base import OnStep, Progress, StageSettings, no_progress, option_words
from mitosis_cli.stages.checks import check_device, check_seed, check_threads
from mitosis_cli.stages.extract import ExtractResult, ExtractSettings, run_extract
from mitosis_cli.stages.transaction import OutputTransaction
from mitosis_cli.training.config import RUN_ENTRIES, TrainConfig

if TYPE_CHECKING:
    from mitosis_cli.runtime import StopFlag
    from mitosis_cli.training.loop import TrainResult

SEED_FIELD = "{seed}"
MAX_SEEDS = 4096  # networks in one batched model: far beyond any protocol (the paper trains a handful per width)


def seed_path(path: Path, seed: int, folder: bool) -> Path:
    """Where seed `seed` of a `--seeds` run writes: `{seed}` in the path is replaced by the seed; without it,
    ``-s<seed>`` is appended to a folder's name (runs/w16 -> runs/w16-s3) or put before a file's suffix
    (acts/w16.h5 -> acts/w16-s3.h5)."""
    text = str(path)
    if SEED_FIELD in text:
        return Path(text.replace(SEED_FIELD, str(seed)))
    if not path.name or path.name == "..":
        raise InputError(f"{path}: with --seeds, name the output (e.g. runs/w16 or 'runs/w16-s{{seed}}'), one folder per seed")
    return path.with_name(f"{path.name}-s{seed}") if folder else path.with_name(f"{path.stem}-s{seed}{path.suffix}")


@dataclass(frozen=True)
class TrainSettings(StageSettings):
    """Options of `mitosis train`: the hyper-parameters (`config`) and where the run goes.

    Attributes
    ----------
    config : TrainConfig
        Every hyper-parameter; `None` fields take the data set's defaults (`TrainConfig.resolved`).
    out : Path
        The run directory (with `seeds`, one per seed: see `seed_path`).
    acts : Path or None
        Also extract the activations to this file at the end (with `seeds`, one per seed: see `seed_path`).
    seeds : tuple of int
        Train these seeds together as one batched model (`training.batched`) instead of `config.seed`
        alone; each seed's folder is what a run with that seed writes.
    data_dir, download : Path or None, bool
        Folder of real data sets in torchvision's layout; let torchvision download a missing one.
    resume, force : bool
        Continue an interrupted run; start over whatever the directory holds.
    device, threads : str, int or None
        Where to train; CPU threads (None: leave torch's setting).
    """

    stage = "train"
    config: TrainConfig = field(default_factory=TrainConfig)
    out: Path = Path("runs/run")
    acts: Path | None = None
    seeds: tuple[int, ...] = ()
    data_dir: Path | None = None
    download: bool = False
    resume: bool = False
    force: bool = False
    device: str = "auto"
    threads: int | None = None

    def to_argv(self) -> list[str]:
        """The run's identity (data set, width, seed) and outputs first, then the options that differ from the defaults."""
        cfg, default = self.config, TrainConfig()
        seed = ("seeds", seed_list(self.seeds)) if self.seeds else ("seed", cfg.seed)
        options: list[tuple[str, Any]] = [("dataset", cfg.dataset), ("width", cfg.width), seed, ("out", self.out),
                                          ("acts", self.acts), ("resume", self.resume or None), ("force", self.force or None)]
        for f in dataclasses.fields(TrainConfig):
            value = getattr(cfg, f.name)
            if f.name in ("dataset", "width", "seed") or value == getattr(default, f.name):
                continue
            options.append((f.name.replace("_", "-"), True if f.name == "until_zero_error" else value))
        options += [("data-dir", self.data_dir), ("download", self.download or None),
                    ("device", None if self.device == "auto" else self.device), ("threads", self.threads)]
        return ["train", *option_words(options)]

    def for_seed(self, seed: int) -> TrainSettings:
        """The single run that seed `seed` of these `seeds` settings is: its seed, run directory and activation file."""
        return dataclasses.replace(self, config=dataclasses.replace(self.config, seed=seed), out=seed_path(self.out, seed, True),
                                   acts=None if self.acts is None else seed_path(self.acts, seed, False), seeds=())

    def check(self) -> None:
        """Refuse option values no run can use: the configuration's ranges (`TrainConfig.validate`), the device,
        the threads, the seeds (each a seed, none twice, one run directory each), and an activation file (--acts)
        that would be one of a run's own files."""
        self.config.resolved()
        check_device(self.device)
        check_threads(self.threads)
        if len(self.seeds) > MAX_SEEDS:
            raise InputError(f"--seeds: {len(self.seeds)} seeds; at most {MAX_SEEDS} train together")
        for seed in self.seeds:
            check_seed(seed, "--seeds")
        twice = [seed for seed, count in Counter(self.seeds).items() if count > 1]
        if twice:
            raise InputError(f"--seeds lists seed {twice[0]} more than once")
        runs = [self.for_seed(seed) for seed in self.seeds] if self.seeds else [self]
        _distinct("run directories", [run.out for run in runs])
        _distinct("activation files (--acts)", [run.acts for run in runs if run.acts is not None])
        for run in (run for run in runs if run.acts is not None):
            output_path(run.acts, folder=False)
            clash = next((name for name in RUN_ENTRIES if lies_inside(run.acts, run.out / name)), None)
            if clash:
                raise InputError(f"--acts {run.acts}: is the run's own {run.out / clash}", hint="choose another --acts file")


def _distinct(what: str, paths: list[Path]) -> None:
    """Refuse two seeds' outputs that are one path (after resolving '..' and links)."""
    seen: dict[str, Path] = {}
    for path in paths:
        other = seen.setdefault(os.path.realpath(path), path)
        if other is not path:
            raise InputError(f"--seeds: two seeds' {what} are one path ({other} and {path})",
                             hint="put '{seed}' in the output name (-o 'runs/w16-s{seed}')")


@dataclass(frozen=True)
class TrainOutcome:
    """What `run_train` did: the training (or the finished run it found) and the extraction, if any."""

    config: TrainConfig  # resolved
    result: TrainResult
    acts: ExtractResult | None

    @property
    def skipped(self) -> bool:
        """Whether the run was already finished (and its activations, if asked for, current)."""
        return self.result.skipped and (self.acts is None or self.acts.skipped)

    def to_json(self) -> dict[str, Any]:
        r, cfg = self.result, self.config
        label = network_label(cfg.model_spec.family, cfg.width, cfg.seed, r.epochs, cfg.dataset)
        return {"run_dir": str(r.run_dir), "label": label, "epochs": r.epochs, "skipped": r.skipped,
                "zero_error_epoch": r.zero_error_epoch,
                "final": r.final, "device": r.device, "acts": str(self.acts.acts) if self.acts else None,
                "config": self.config.to_dict()}


@dataclass(frozen=True)
class SeedsOutcome:
    """What `run_train` did with `seeds`: one `TrainOutcome` per seed, in seed order."""

    runs: tuple[TrainOutcome, ...]

    @property
    def skipped(self) -> bool:
        return all(run.skipped for run in self.runs)

    def to_json(self) -> dict[str, Any]:
        return {"runs": [run.to_json() for run in self.runs]}


def run_train(settings: TrainSettings, on_step: OnStep = no_progress,
              stop: StopFlag | None = None) -> TrainOutcome | SeedsOutcome:
    """`mitosis train`: train `settings.config` into `settings.out` (resumable), then extract to `settings.acts`.

    `on_step` receives a `Progress` per epoch whose `values` are the history row (epoch, lr, train_loss,
    train_error, test_loss, test_error, seconds), and one at least every half minute inside a long epoch
    (its step). The task names the network (``train mnist5k mlp-2-relu w512 s0``). Under torchrun only
    rank 0 writes and extracts. With `settings.seeds` the seeds train together (`run_seeds`).
    """
    return run_seeds(settings, on_step, stop) if settings.seeds else _run_one(settings, on_step, stop)


def _run_one(settings: TrainSettings, on_step: OnStep, stop: StopFlag | None) -> TrainOutcome:
    from mitosis_cli.training.loop import train_run  # torch: loaded when a network is trained, not for --help

    settings.check()
    cfg = settings.config.resolved()
    if settings.threads is not None:
        set_threads(settings.threads)
    device = pick_device(settings.device)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    tx = _runs_transaction(settings, [settings.out])

    task = f"train {network_label(cfg.model_spec.family, cfg.width, cfg.seed, dataset=cfg.dataset)}"

    def on_epoch(epoch: int, planned: int, row: dict[str, float]) -> None:
        test = row.get("test_error", math.nan)
        on_step(Progress(task, epoch, max(planned, epoch),
                         f"train loss {row['train_loss']:.4g} error {row['train_error']:.4f}"
                         + ("" if math.isnan(test) else f", test error {test:.4f}")
                         + f", lr {row['lr']:.3g}, {row['seconds']:.1f} s", row, "epoch"))

    def on_batch(epoch: int, steps: int, per_epoch: int) -> None:
        planned = max(int(cfg.epochs), epoch)
        on_step(Progress(task, epoch - 1, planned, f"done; epoch {epoch} at step {steps}/{per_epoch}", unit="epoch"))

    with tx.locked() if main_rank else nullcontext():  # --force replaces the run only once the new one is complete
        result = train_run(cfg, settings.out, data_dir=settings.data_dir, download=settings.download, device=device,
                           resume=settings.resume, force=settings.force, on_epoch=on_epoch, on_batch=on_batch, stop=stop,
                           command=settings.command())
    acts = None
    if settings.acts is not None and main_rank:
        acts = run_extract(ExtractSettings(source=settings.out, out=settings.acts, data_dir=settings.data_dir,
                                           device=settings.device, force=settings.force))
    return TrainOutcome(cfg, result, acts)


def _runs_transaction(settings: TrainSettings, run_dirs: list[Path]) -> OutputTransaction:
    """The transaction of training runs: each run directory and its entries of their kind, apart from the data."""
    for run_dir in run_dirs:
        for name in RUN_ENTRIES:  # e.g. a directory named config.json would be found only when it is written
            output_path(run_dir / name, folder=name == "checkpoints")
    return OutputTransaction(runs=tuple(run_dirs), run_entries=RUN_ENTRIES,
                             inputs=(settings.data_dir,) if settings.data_dir is not None else ())


def run_seeds(settings: TrainSettings, on_step: OnStep = no_progress, stop: StopFlag | None = None) -> SeedsOutcome:
    """`mitosis train --seeds`: every seed of `settings.seeds` trained as one batched model, then extracted.

    Each seed's run directory and activation file (`TrainSettings.for_seed`) end up as a run with that
    seed alone would leave them. `on_step` receives a `Progress` per epoch whose `values` are the mean
    of the seeds' history rows (task ``train mnist5k mlp-2-relu w16 s0-15``), and one at least every half
    minute inside a long epoch. Under torchrun the seeds train one after another (distributed, as single runs).
    """
    settings.check()  # every seed's run, before any is trained
    runs = {seed: settings.for_seed(seed) for seed in settings.seeds}
    if len(runs) == 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return SeedsOutcome(tuple(_run_one(one, on_step, stop) for one in runs.values()))
    from mitosis_cli.training.batched import train_seeds  # torch: loaded when a network is trained, not for --help

    cfg = settings.config.resolved()
    if settings.threads is not None:
        set_threads(settings.threads)
    task = f"train {network_label(cfg.model_spec.family, cfg.width, dataset=cfg.dataset)} s{seed_list(settings.seeds)}"

    def on_epoch(epoch: int, planned: int, rows: Mapping[int, dict[str, float]]) -> None:
        mean = {key: sum(row[key] for row in rows.values()) / len(rows) for key in next(iter(rows.values()))}
        errors = [row["train_error"] for row in rows.values()]
        on_step(Progress(task, epoch, max(planned, epoch), f"train error {min(errors):.4f}-{max(errors):.4f}, test error "
                         f"{mean['test_error']:.4f} (mean of {len(rows)}), lr {mean['lr']:.3g}, {mean['seconds']:.1f} s",
                         mean, "epoch"))

    def on_batch(epoch: int, steps: int, per_epoch: int) -> None:
        planned = max(int(cfg.epochs), epoch)
        on_step(Progress(task, epoch - 1, planned, f"done; epoch {epoch} at step {steps}/{per_epoch}", unit="epoch"))

    tx = _runs_transaction(settings, [one.out for one in runs.values()])
    with tx.locked():  # --force replaces each run only once the new ones are complete (`training.loop.staged_runs`)
        results = train_seeds(cfg, {seed: one.out for seed, one in runs.items()}, data_dir=settings.data_dir,
                              download=settings.download, device=pick_device(settings.device), resume=settings.resume,
                              force=settings.force, on_epoch=on_epoch, on_batch=on_batch, stop=stop,
                              command=settings.command())
    outcomes = []
    for seed, one in runs.items():
        acts = None
        if one.acts is not None:
            acts = run_extract(ExtractSettings(source=one.out, out=one.acts, data_dir=settings.data_dir,
                                               device=settings.device, force=settings.force))
        outcomes.append(TrainOutcome(dataclasses.replace(cfg, seed=seed), results[seed], acts))
    return SeedsOutcome(tuple(outcomes))


def seed_list(seeds: tuple[int, ...]) -> str:
    """(0, 1, 2, 3, 7) -> '0-3,7': sorted seeds in the integer-list grammar of `values.parse_int_list`."""
    runs: list[list[int]] = []
    for seed in seeds:
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return ",".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)
