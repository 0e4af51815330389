"""The extract stage: a trained network's last hidden layer on whole splits, to an HDF5 activation file;
and merge, which joins the shards of one extraction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import SPLITS, ActivationFile
from mitosis_cli.io.shards import merge_shards
from mitosis_cli.io.stamp import Decision, Stamp
from mitosis_cli.runtime import pick_device, set_threads
from mitosis_cli.stages.base import OnStep, Progress, StageSettings, no_progress, option_words, paths_after_options
from mitosis_cli.stages.checks import check_device, check_threads
from mitosis_cli.stages.transaction import OutputTransaction


def _activation_stamp(path: Path) -> Stamp | None:
    """The stamp of the activation file at `path`; None when it is not one (or damaged)."""
    try:
        return ActivationFile(path).header.stamp()
    except InputError:
        return None


@dataclass(frozen=True)
class ExtractSettings(StageSettings):
    """Options of `mitosis extract`.

    Attributes
    ----------
    source : Path
        A run directory (its last checkpoint) or a checkpoint file.
    out : Path or None
        The activation file (default: SOURCE/acts.h5 for a run directory).
    epoch : int or None
        Use the weights saved at this epoch (`train --save-epochs`).
    splits : tuple of str
        ``train`` and/or ``test``.
    untrained, noise_inputs : bool
        Controls: the architecture at its seeded initialisation; Gaussian noise as inputs (labels kept).
    shard : (int, int) or None
        Write only part K of N of each split (join the parts with `run_merge`).
    data_dir, device, threads, force
        Folder of real data sets; where to compute; CPU threads (None: leave torch's); redo existing work.
    """

    stage = "extract"
    source: Path = Path("runs/run")
    out: Path | None = None
    epoch: int | None = None
    splits: tuple[str, ...] = SPLITS
    untrained: bool = False
    noise_inputs: bool = False
    shard: tuple[int, int] | None = None
    data_dir: Path | None = None
    device: str = "auto"
    threads: int | None = None
    force: bool = False

    @property
    def target(self) -> Path:
        """Where the activations go."""
        if self.out is not None:
            return self.out
        return self.source / "acts.h5" if self.source.is_dir() else self.source.with_suffix(".h5")

    def to_argv(self) -> list[str]:
        splits = [("split", s) for s in self.splits] if tuple(self.splits) != SPLITS else []
        words = option_words([
            ("out", self.out), ("epoch", self.epoch), *splits, ("untrained", self.untrained or None),
            ("noise-inputs", self.noise_inputs or None), ("shard", f"{self.shard[0]}/{self.shard[1]}" if self.shard else None),
            ("data-dir", self.data_dir), ("device", None if self.device == "auto" else self.device),
            ("threads", self.threads), ("force", self.force or None),
        ])
        return ["extract", *words, *paths_after_options([self.source])]

    def check(self) -> None:
        """Refuse option values no extraction can use."""
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise InputError(f"--split {bad[0] if bad else ''!r}: choose from {', '.join(SPLITS)}")
        if self.epoch is not None and self.epoch < 0:
            raise InputError(f"--epoch must be >= 0, got {self.epoch}")
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise InputError(f"--shard {self.shard[0]}/{self.shard[1]}: expected K/N with 0 <= K < N")
        check_device(self.device)
        check_threads(self.threads)


@dataclass(frozen=True)
class ExtractResult:
    acts: Path
    skipped: bool
    splits: tuple[str, ...]
    width: int
    epoch: int
    arch: str
    label: str  # the network, e.g. "mlp-bn-d2 W=512"
    checkpoint: Path

    def to_json(self) -> dict[str, Any]:
        return {"acts": str(self.acts), "splits": list(self.splits), "width": self.width, "epoch": self.epoch,
                "arch": self.arch, "checkpoint": str(self.checkpoint), "skipped": self.skipped}


def run_extract(settings: ExtractSettings, on_step: OnStep = no_progress) -> ExtractResult:
    """`mitosis extract`: write the activations unless the target already holds this extraction (by its stamp)."""
    from mitosis_cli.training.extract import extract_activations, extraction_header, load_trained_model

    settings.check()
    if settings.threads is not None:
        set_threads(settings.threads)
    device = pick_device(settings.device)
    splits = tuple(dict.fromkeys(settings.splits))
    target = settings.target
    trained = load_trained_model(settings.source, settings.epoch, untrained=settings.untrained, device=device)
    wanted = extraction_header(trained, splits, settings.untrained, settings.noise_inputs, settings.shard).stamp()
    tx = OutputTransaction(files=(target,), inputs=(trained.checkpoint,))
    with tx.locked():
        decision = tx.decide(wanted, _activation_stamp, settings.force)
        if decision is Decision.WRITE:
            extract_activations(trained, target, splits, data_dir=settings.data_dir, noise_inputs=settings.noise_inputs,
                                untrained=settings.untrained, device=device, shard=settings.shard)
    cfg = trained.config
    on_step(Progress("extract", 1, 1, f"{'current' if decision is Decision.SKIP else 'wrote'} {target}"))
    return ExtractResult(target, decision is Decision.SKIP, splits, cfg.width, trained.epoch, cfg.model_spec.family,
                         cfg.model_spec.label, trained.checkpoint)


@dataclass(frozen=True)
class MergeSettings(StageSettings):
    """Options of `mitosis merge`: the shard files of one extraction and the activation file to write."""

    stage = "merge"
    parts: tuple[Path, ...] = ()
    out: Path = Path("acts.h5")
    force: bool = False

    def to_argv(self) -> list[str]:
        return ["merge", *option_words([("out", self.out), ("force", self.force or None)]), *paths_after_options(self.parts)]

    def check(self) -> None:
        if not self.parts:
            raise InputError("no shards given: pass the files written by `mitosis extract --shard K/N`")


@dataclass(frozen=True)
class MergeResult:
    acts: Path
    skipped: bool
    parts: tuple[Path, ...]

    def to_json(self) -> dict[str, Any]:
        return {"acts": str(self.acts), "parts": [str(p) for p in self.parts], "skipped": self.skipped}


def run_merge(settings: MergeSettings, on_step: OnStep = no_progress) -> MergeResult:
    """`mitosis merge`: join the shards (rows in shard order) into one activation file.

    The merged file has the stamp of the one extraction the shards are parts of, so merging again is
    skipped and a file of another extraction at the target is refused (unless `settings.force`).
    """
    settings.check()
    first = ActivationFile(settings.parts[0]).header
    wanted = dataclasses.replace(first, shard="", shard_rows={}).stamp()
    tx = OutputTransaction(files=(settings.out,), inputs=settings.parts)
    with tx.locked():
        decision = tx.decide(wanted, _activation_stamp, settings.force)
        if decision is Decision.WRITE:
            merge_shards(settings.parts, settings.out)
    on_step(Progress("merge", 1, 1, f"{len(settings.parts)} shards -> {settings.out}"))
    return MergeResult(settings.out, decision is Decision.SKIP, settings.parts)
