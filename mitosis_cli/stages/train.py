"""The train stage: train one network into a run directory, and extract its activations if asked."""

from __future__ import annotations

import dataclasses
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitosis_cli.io.activations import network_label
from mitosis_cli.io.atomic import output_lock
from mitosis_cli.runtime import pick_device, set_threads
from mitosis_cli.stages.base import OnStep, Progress, StageSettings, no_progress, option_words
from mitosis_cli.stages.extract import ExtractResult, ExtractSettings, run_extract
from mitosis_cli.training.config import TrainConfig

if TYPE_CHECKING:
    from mitosis_cli.runtime import StopFlag
    from mitosis_cli.training.loop import TrainResult


@dataclass(frozen=True)
class TrainSettings(StageSettings):
    """Options of `mitosis train`: the hyper-parameters (`config`) and where the run goes.

    Attributes
    ----------
    config : TrainConfig
        Every hyper-parameter; `None` fields take the data set's defaults (`TrainConfig.resolved`).
    out : Path
        The run directory.
    acts : Path or None
        Also extract the activations to this file at the end.
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
    data_dir: Path | None = None
    download: bool = False
    resume: bool = False
    force: bool = False
    device: str = "auto"
    threads: int | None = None

    def to_argv(self) -> list[str]:
        """The run's identity (data set, width, seed) and outputs first, then the options that differ from the defaults."""
        cfg, default = self.config, TrainConfig()
        options: list[tuple[str, Any]] = [("dataset", cfg.dataset), ("width", cfg.width), ("seed", cfg.seed),
                                          ("out", self.out), ("acts", self.acts), ("resume", self.resume or None),
                                          ("force", self.force or None)]
        for f in dataclasses.fields(TrainConfig):
            value = getattr(cfg, f.name)
            if f.name in ("dataset", "width", "seed") or value == getattr(default, f.name):
                continue
            options.append((f.name.replace("_", "-"), True if f.name == "until_zero_error" else value))
        options += [("data-dir", self.data_dir), ("download", self.download or None),
                    ("device", None if self.device == "auto" else self.device), ("threads", self.threads)]
        return ["train", *option_words(options)]


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


def run_train(settings: TrainSettings, on_step: OnStep = no_progress, stop: StopFlag | None = None) -> TrainOutcome:
    """`mitosis train`: train `settings.config` into `settings.out` (resumable), then extract to `settings.acts`.

    `on_step` receives a `Progress` per epoch whose `values` are the history row (epoch, lr, train_loss,
    train_error, test_loss, test_error, seconds), and one at least every half minute inside a long epoch
    (its step). The task names the network (``train mnist5k mlp-2-relu w512 s0``). Under torchrun only
    rank 0 writes and extracts.
    """
    from mitosis_cli.training.loop import train_run  # torch: loaded when a network is trained, not for --help

    cfg = settings.config.resolved()
    if settings.threads is not None:
        set_threads(settings.threads)
    device = pick_device(settings.device)
    main_rank = int(os.environ.get("RANK", "0")) == 0

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

    with output_lock(settings.out) if main_rank else nullcontext():
        result = train_run(cfg, settings.out, data_dir=settings.data_dir, download=settings.download, device=device,
                           resume=settings.resume, force=settings.force, on_epoch=on_epoch, on_batch=on_batch, stop=stop,
                           command=settings.command())
    acts = None
    if settings.acts is not None and main_rank:
        acts = run_extract(ExtractSettings(source=settings.out, out=settings.acts, data_dir=settings.data_dir,
                                           device=settings.device, force=settings.force))
    return TrainOutcome(cfg, result, acts)
