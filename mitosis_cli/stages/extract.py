"""The extract stage: a trained network's last hidden layer on whole splits, to an HDF5 activation file;
and merge, which joins the shards of one extraction.

The network is a run of `mitosis train` (SOURCE), or one mitosis did not train (`model`: a torchvision
architecture or a user's factory, with local `weights`) read on an image folder (`images`) or a
registered data set (`dataset`); docs/own-network.md has the rules.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import SPLITS, ActivationFile
from mitosis_cli.io.checks import MAX_CLASSES
from mitosis_cli.io.paths import input_file, input_folder
from mitosis_cli.io.shards import merge_shards
from mitosis_cli.io.stamp import Decision, Stamp
from mitosis_cli.models.spec import parse_model_ref
from mitosis_cli.runtime import pick_device, set_threads
from mitosis_cli.stages.base import OnStep, Progress, StageSettings, no_progress, option_words, paths_after_options
from mitosis_cli.stages.checks import check_device, check_float, check_int, check_seed, check_threads
from mitosis_cli.stages.transaction import OutputTransaction

if TYPE_CHECKING:
    import torch

MAX_IMAGE_SIZE = 16_384  # pixels on a side: one such RGB image is 3 GiB of float32
MAX_BATCH = 1 << 20
MAX_WORKERS = 1024


def activation_stamp(path: Path) -> Stamp | None:
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
    source : Path or None
        A run directory (its last checkpoint) or a checkpoint file; None with `model`.
    out : Path or None
        The activation file (default: SOURCE/acts.h5 for a run directory; required with `model`).
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
    model : str or None
        A network mitosis did not train: ``torchvision:NAME`` or ``module:PKG.MOD:FACTORY`` (instead of `source`).
    weights : Path or None
        Its weights: a state dict (plain or under a usual key) in a torch file, or a .safetensors file.
    images, dataset
        What it reads: a folder ``DIR/{train,test}/CLASS/*``, or a registered data set name.
    num_classes : int or None
        Outputs of its head when they differ from the constructor's default (1000 for torchvision).
    strict : bool
        The weights' keys must be exactly the model's (after removing ``module.``/``_orig_mod.``).
    layer : str or None
        The module read instead of the classification head's input (a Linear: its input; else its output).
    image_size, resize, mean, std
        The image transform: shorter side to `resize` (default image_size x 256/224), centre crop, normalise
        (default: ImageNet's mean and std).
    seed : int or None
        The seed the network was trained with, when known (it names the network in tables and ensembles).
    batch_size, workers
        Images per forward pass; DataLoader worker processes decoding images.
    """

    stage = "extract"
    source: Path | None = None
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
    model: str | None = None
    weights: Path | None = None
    images: Path | None = None
    dataset: str | None = None
    num_classes: int | None = None
    strict: bool = True
    layer: str | None = None
    image_size: int = 224
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seed: int | None = None
    batch_size: int = 64
    workers: int = 0

    @property
    def target(self) -> Path:
        """Where the activations go."""
        if self.out is not None:
            return self.out
        if self.source is None:
            raise InputError("--model needs --out (-o): the activation file to write")
        return self.source / "acts.h5" if self.source.is_dir() else self.source.with_suffix(".h5")

    def to_argv(self) -> list[str]:
        splits = [("split", s) for s in self.splits] if tuple(self.splits) != SPLITS else []
        default = ExtractSettings()
        words = option_words([
            ("model", self.model), ("weights", self.weights), ("images", self.images), ("dataset", self.dataset),
            ("num-classes", self.num_classes), ("strict", None if self.strict else False), ("layer", self.layer),
            ("image-size", None if self.image_size == default.image_size else self.image_size), ("resize", self.resize),
            ("mean", self.mean), ("std", self.std), ("seed", self.seed),
            ("batch-size", None if self.batch_size == default.batch_size else self.batch_size),
            ("workers", self.workers or None),
            ("out", self.out), ("epoch", self.epoch), *splits, ("untrained", self.untrained or None),
            ("noise-inputs", self.noise_inputs or None), ("shard", f"{self.shard[0]}/{self.shard[1]}" if self.shard else None),
            ("data-dir", self.data_dir), ("device", None if self.device == "auto" else self.device),
            ("threads", self.threads), ("force", self.force or None),
        ])
        return ["extract", *words, *(paths_after_options([self.source]) if self.source is not None else [])]

    def check(self) -> None:
        """Refuse option values no extraction can use, and options of the other kind of network."""
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise InputError(f"--split {bad[0] if bad else ''!r}: choose from {', '.join(SPLITS)}")
        check_int("--epoch", self.epoch, 0)
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise InputError(f"--shard {self.shard[0]}/{self.shard[1]}: expected K/N with 0 <= K < N")
        check_device(self.device)
        check_threads(self.threads)
        default = ExtractSettings()
        own = {"--weights": self.weights, "--images": self.images, "--dataset": self.dataset, "--num-classes": self.num_classes,
               "--no-strict": not self.strict or None, "--layer": self.layer, "--resize": self.resize, "--mean": self.mean,
               "--std": self.std, "--seed": self.seed, "--image-size": self.image_size != default.image_size or None,
               "--batch-size": self.batch_size != default.batch_size or None, "--workers": self.workers or None}
        if self.model is None:
            given = [name for name, value in own.items() if value is not None]
            if given:
                raise InputError(f"{given[0]} reads a network mitosis did not train: give it with --model")
            if self.source is None:
                raise InputError("give a run directory or checkpoint (SOURCE), or a network with --model")
            return
        parse_model_ref(self.model)
        run_only = {"SOURCE": self.source, "--epoch": self.epoch, "--untrained": self.untrained or None,
                    "--noise-inputs": self.noise_inputs or None}
        given = [name for name, value in run_only.items() if value is not None]
        if given:
            raise InputError(f"{given[0]} reads a run of `mitosis train`; not with --model")
        if self.weights is None:
            raise InputError("--model needs --weights FILE: the trained weights (nothing is downloaded)")
        if (self.images is None) == (self.dataset is None):
            raise InputError("--model needs one input: --images DIR (DIR/train/CLASS/*, DIR/test/CLASS/*) or --dataset NAME")
        transform = [n for n in ("--image-size", "--resize", "--mean", "--std") if own[n] is not None]
        if self.dataset is not None and transform:
            raise InputError(f"{transform[0]} transforms --images; a --dataset is read as mitosis trains on it")
        if self.out is None:
            raise InputError("--model needs --out (-o): the activation file to write")
        self._check_own_network()

    def _check_own_network(self) -> None:
        """The ranges of the options of a network mitosis did not train, and the kinds of its input files."""
        check_int("--num-classes", self.num_classes, 1, MAX_CLASSES)
        check_int("--batch-size", self.batch_size, 1, MAX_BATCH)
        check_int("--workers", self.workers, 0, MAX_WORKERS)
        check_int("--image-size", self.image_size, 1, MAX_IMAGE_SIZE)
        check_int("--resize", self.resize, self.image_size, MAX_IMAGE_SIZE)
        if self.seed is not None:
            check_seed(self.seed)
        for option, values in (("--mean", self.mean), ("--std", self.std)):
            if values is not None and len(values) not in (1, 3):
                raise InputError(f"{option} needs 1 (greyscale) or 3 (RGB) values, got {len(values)}")
            for value in values or ():
                check_float(option, value, above=0 if option == "--std" else None)
        channels = [len(v) if v is not None else 3 for v in (self.mean, self.std)]  # the defaults: ImageNet's 3
        if channels[0] != channels[1]:
            raise InputError(f"--mean has {channels[0]} value{'s' * (channels[0] != 1)} and --std {channels[1]} (the defaults "
                             "are ImageNet's 3): give as many of each")
        if self.layer is not None and not self.layer.strip():
            raise InputError("--layer '': name a module of the model (as in model.named_modules())")
        input_file(self.weights, "a weights file (a torch file or .safetensors)")
        if self.images is not None:
            input_folder(self.images, "--images")


@dataclass(frozen=True)
class ExtractResult:
    acts: Path
    skipped: bool
    splits: tuple[str, ...]
    width: int
    epoch: int
    arch: str
    label: str  # the network, e.g. "mlp-bn-d2 W=512"
    checkpoint: Path  # the checkpoint, or the weights file of a --model network
    layer: str = ""
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"acts": str(self.acts), "splits": list(self.splits), "width": self.width, "epoch": self.epoch,
                "arch": self.arch, "checkpoint": str(self.checkpoint), "skipped": self.skipped, "layer": self.layer,
                "notes": list(self.notes)}


def run_extract(settings: ExtractSettings, on_step: OnStep = no_progress) -> ExtractResult:
    """`mitosis extract`: write the activations unless the target already holds this extraction (by its stamp)."""
    from mitosis_cli.training.extract import extract_activations, extraction_header, load_trained_model

    settings.check()
    if settings.threads is not None:
        set_threads(settings.threads)
    device = pick_device(settings.device)
    if settings.model is not None:
        return _extract_external(settings, device, on_step)
    assert settings.source is not None  # check(): a run or a model
    splits = tuple(dict.fromkeys(settings.splits))
    target = settings.target
    trained = load_trained_model(settings.source, settings.epoch, untrained=settings.untrained, device=device)
    wanted = extraction_header(trained, splits, settings.untrained, settings.noise_inputs, settings.shard).stamp()
    tx = OutputTransaction(files=(target,), inputs=(trained.checkpoint,))
    with tx.locked():
        decision = tx.decide(wanted, activation_stamp, settings.force)
        if decision is Decision.WRITE:
            extract_activations(trained, target, splits, data_dir=settings.data_dir, noise_inputs=settings.noise_inputs,
                                untrained=settings.untrained, device=device, shard=settings.shard)
    cfg = trained.config
    on_step(Progress("extract", 1, 1, f"{'current' if decision is Decision.SKIP else 'wrote'} {target}"))
    return ExtractResult(target, decision is Decision.SKIP, splits, cfg.width, trained.epoch, cfg.model_spec.family,
                         cfg.model_spec.label, trained.checkpoint)


def _extract_external(settings: ExtractSettings, device: torch.device, on_step: OnStep) -> ExtractResult:
    """`run_extract` for a network mitosis did not train (`settings.model`): validate, stamp, decide, stream."""
    from mitosis_cli.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, default_resize
    from mitosis_cli.training.external import (
        dataset_inputs,
        external_header,
        extract_external,
        image_inputs,
        layer_width,
        load_external_model,
    )

    assert settings.model is not None and settings.weights is not None  # check()
    ref = parse_model_ref(settings.model)
    target = settings.target
    tx = OutputTransaction(files=(target,), inputs=(settings.weights,),
                           read_folders=(settings.images,) if settings.images is not None else ())
    if settings.images is not None:
        transform = ImageTransform(settings.image_size, settings.resize or default_resize(settings.image_size),
                                   settings.mean or IMAGENET_MEAN, settings.std or IMAGENET_STD)
        inputs = image_inputs(settings.images, transform)
    else:
        assert settings.dataset is not None  # check(): images or a data set
        inputs = dataset_inputs(settings.dataset, settings.data_dir)
    splits = tuple(s for s in dict.fromkeys(settings.splits) if s in inputs.splits)
    if not splits:
        raise InputError(f"{settings.images or settings.dataset}: has no {' or '.join(settings.splits)} split")
    ext = load_external_model(ref, settings.weights, settings.num_classes, settings.strict, settings.layer, device)
    width = layer_width(ext, inputs, device)
    header = external_header(ext, inputs, width, splits, settings.seed, settings.shard)

    def progress(split: str, done: int, total: int) -> None:
        on_step(Progress(f"extract {split}", done, total, header.label))

    with tx.locked():
        decision = tx.decide(header.stamp(), activation_stamp, settings.force)
        if decision is Decision.WRITE:
            extract_external(ext, inputs, header, target, device=device, batch_size=settings.batch_size,
                             workers=settings.workers, shard=settings.shard, on_rows=progress)
    on_step(Progress("extract", 1, 1, f"{'current' if decision is Decision.SKIP else 'wrote'} {target}"))
    notes = []
    if ext.loaded.missing:
        notes.append(f"--no-strict: {len(ext.loaded.missing)} tensors of the model are not in the weights and kept their "
                     f"initial values (e.g. {ext.loaded.missing[0]})")
    if ext.loaded.unexpected:
        notes.append(f"--no-strict: {len(ext.loaded.unexpected)} tensors of the weights are not in the model and were "
                     f"ignored (e.g. {ext.loaded.unexpected[0]})")
    return ExtractResult(target, decision is Decision.SKIP, splits, width, -1, ref.arch, header.label, settings.weights,
                         header.layer, tuple(notes))


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
        decision = tx.decide(wanted, activation_stamp, settings.force)
        if decision is Decision.WRITE:
            merge_shards(settings.parts, settings.out)
    on_step(Progress("merge", 1, 1, f"{len(settings.parts)} shards -> {settings.out}"))
    return MergeResult(settings.out, decision is Decision.SKIP, settings.parts)
