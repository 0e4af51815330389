"""The train stage: train one network into a run directory, and extract its activations if asked."""

from __future__ import annotations

import dataclasses
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitosis_cli.errors import InputError
from mitosis_cli.io.paths import lies_inside, output_path
from mitosis_cli.runtime import pick_device, set_threads
from mitosis_cli.stages.base import OnStep, Progress, StageSettings, no_progress, option_words
from mitosis_cli.stages.checks import check_device, check_threads
from mitosis_cli.stages.extract import ExtractResult, ExtractSettings, run_extract
from mitosis_cli.stages.transaction import OutputTransaction
from mitosis_cli.training.config import RUN_ENTRIES, TrainConfig

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

    def check(self) -> None:
        """Refuse option values no run can use: the configuration's ranges (`TrainConfig.validate`), the device,
        the threads, and an activation file (--acts) that would be one of the run's own files."""
        self.config.resolved()
        check_device(self.device)
        check_threads(self.threads)
        if self.acts is not None:
            output_path(self.acts, folder=False)
            clash = next((name for name in RUN_ENTRIES if lies_inside(self.acts, self.out / name)), None)
            if clash:
                raise InputError(f"--acts {self.acts}: is the run's own {self.out / clash}", hint="choose another --acts file")


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
        r = self.result
        return {"run_dir": str(r.run_dir), "epochs": r.epochs, "skipped": r.skipped, "zero_error_epoch": r.zero_error_epoch,
                "final": r.final, "device": r.device, "acts": str(self.acts.acts) if self.acts else None,
                "config": self.config.to_dict()}


def run_train(settings: TrainSettings, on_step: OnStep = no_progress, stop: StopFlag | None = None) -> TrainOutcome:
    """`mitosis train`: train `settings.config` into `settings.out` (resumable), then extract to `settings.acts`.

    `on_step` receives a `Progress` per epoch whose `values` are the history row (epoch, lr, train_loss,
    train_error, test_loss, test_error, seconds). Under torchrun only rank 0 writes and extracts.
    """
    from mitosis_cli.training.loop import train_run  # torch: loaded when a network is trained, not for --help

    settings.check()
    cfg = settings.config.resolved()
    if settings.threads is not None:
        set_threads(settings.threads)
    device = pick_device(settings.device)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    tx = OutputTransaction(runs=(settings.out,), run_entries=RUN_ENTRIES,
                           inputs=(settings.data_dir,) if settings.data_dir is not None else ())
    for name in RUN_ENTRIES:  # e.g. a directory named config.json would be found only when it is written
        output_path(settings.out / name, folder=name == "checkpoints")

    def on_epoch(epoch: int, planned: int, row: dict[str, float]) -> None:
        on_step(Progress("train", epoch, max(planned, epoch),
                         f"train err {row['train_error']:.4f}  test err {row['test_error']:.4f}", row))

    with tx.locked() if main_rank else nullcontext():  # --force replaces the run only once the new one is complete
        result = train_run(cfg, settings.out, data_dir=settings.data_dir, download=settings.download, device=device,
                           resume=settings.resume, force=settings.force, on_epoch=on_epoch, stop=stop,
                           command=settings.command())
    acts = None
    if settings.acts is not None and main_rank:
        acts = run_extract(ExtractSettings(source=settings.out, out=settings.acts, data_dir=settings.data_dir,
                                           device=settings.device, force=settings.force))
    return TrainOutcome(cfg, result, acts)
