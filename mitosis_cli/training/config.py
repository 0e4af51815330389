"""The training configuration: every hyper-parameter of a run, saved as `config.json`."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mitosis_cli.errors import InputError
from mitosis_cli.models.spec import ARCHS, DEFAULT_DEPTH, DEFAULT_ENDING, ModelSpec, check_spec

RUN_ENTRIES = ("config.json", "history.parquet", "checkpoints", "checkpoint.pt")  # what `train` writes in a run directory
SEED_MAX = (1 << 63) - 1  # seeds are stored as int64 in activation files and tables
MAX_EPOCHS = 1_000_000
MAX_WIDTH = 1 << 20  # a last layer of a million neurons; the paper's widest is 4,096
MAX_DEPTH = 1_000
# Paper defaults for CIFAR Wide-ResNets / DenseNets (Doimo et al. 2022).
PAPER_CIFAR = {"lr": 0.1, "weight_decay": 5e-4, "epochs": 200, "batch_size": 128, "lr_min": 1e-5, "augment": True}
# Built-in data: an MLP reaches zero training error in ~20 epochs, a few seconds per width on a laptop CPU.
BUILTIN = {"lr": 0.05, "weight_decay": 5e-3, "epochs": 100, "batch_size": 128, "lr_min": 0.0, "augment": False}


@dataclass
class TrainConfig:
    """Everything that determines a training run (same config and seed -> same weights on CPU)."""

    dataset: str = "mnist5k"
    train_size: int | None = None
    arch: str = "mlp"
    width: int = 256
    depth: int | None = None  # None: the architecture's default (mlp 2, wrn 28, densenet 40)
    ending: str | None = None  # None: relu for mlp, batchnorm for wrn/densenet (the paper's)
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str = "cosine"
    lr_min: float | None = None
    label_smoothing: float = 0.0
    augment: bool | None = None
    seed: int = 0
    until_zero_error: bool = False
    max_epochs: int | None = None
    save_epochs: list[int] = field(default_factory=list)

    def resolved(self) -> TrainConfig:
        """Fill the `None` defaults from the architecture and data set (paper defaults for CIFAR)."""
        base = PAPER_CIFAR if self.dataset.startswith("cifar") else BUILTIN
        out = dataclasses.replace(self)
        for key, value in base.items():
            if getattr(out, key) is None:
                setattr(out, key, value)
        out.depth = out.depth if out.depth is not None else DEFAULT_DEPTH.get(out.arch, 2)
        out.ending = out.ending or DEFAULT_ENDING.get(out.arch, "relu")
        out.max_epochs = out.max_epochs if out.max_epochs is not None else 2 * out.epochs
        out.save_epochs = sorted(set(out.save_epochs))
        out.validate()
        check_spec(out.model_spec)
        return out

    def validate(self) -> None:
        """Raise `InputError` for values no run can use (each option has a range; numbers must be finite)."""
        numbers = {"--lr": self.lr, "--momentum": self.momentum, "--weight-decay": self.weight_decay, "--lr-min": self.lr_min,
                   "--label-smoothing": self.label_smoothing}
        for option, value in numbers.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise InputError(f"{option} must be a finite number, got {value!r}")
        integers = [("--seed", self.seed), ("--width", self.width), ("--depth", self.depth), ("--epochs", self.epochs),
                    ("--batch-size", self.batch_size), ("--max-epochs", self.max_epochs), ("--train-size", self.train_size),
                    *(("--save-epochs", e) for e in self.save_epochs)]
        for option, value in integers:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InputError(f"{option} must be an integer, got {value!r}")
        checks = [
            (self.optimizer in ("sgd", "adam"), f"--optimizer must be sgd or adam, got {self.optimizer!r}"),
            (self.schedule in ("cosine", "constant"), f"--schedule must be cosine or constant, got {self.schedule!r}"),
            (0 <= self.seed <= SEED_MAX, f"--seed must be between 0 and {SEED_MAX}, got {self.seed}"),
            (self.depth is None or 1 <= self.depth <= MAX_DEPTH, f"--depth must be between 1 and {MAX_DEPTH}, got {self.depth}"),
            (1 <= self.width <= MAX_WIDTH, f"--width must be between 1 and {MAX_WIDTH}, got {self.width}"),
            (self.epochs is None or 1 <= self.epochs <= MAX_EPOCHS, f"--epochs must be between 1 and {MAX_EPOCHS}"),
            (self.batch_size is None or self.batch_size >= 2, "--batch-size must be at least 2"),
            (self.train_size is None or self.train_size >= 1, f"--train-size must be at least 1, got {self.train_size}"),
            (self.lr is None or self.lr > 0, "--lr must be positive"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay is None or self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.lr_min is None or self.lr_min >= 0, "--lr-min must be >= 0"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            (self.max_epochs is None or self.epochs is None or self.max_epochs >= self.epochs,
             "--max-epochs must be >= --epochs"),
            (self.max_epochs is None or self.max_epochs <= MAX_EPOCHS, f"--max-epochs must be at most {MAX_EPOCHS}"),
            (all(e >= 0 for e in self.save_epochs), "--save-epochs must be non-negative epoch numbers"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        if self.has_batchnorm and self.train_size == 1:  # BatchNorm cannot normalise a batch of one sample in training
            raise InputError(f"--train-size 1: a network with BatchNorm ({self.arch}, ending {self.ending or 'default'}) "
                             "needs at least 2 training samples")

    @property
    def has_batchnorm(self) -> bool:
        """Whether the network normalises batches (Wide-ResNets, DenseNets, and an MLP ending in BatchNorm)."""
        return self.arch in ("wrn", "densenet") or self.ending == "batchnorm"

    @property
    def model_spec(self) -> ModelSpec:
        depth = int(self.depth or DEFAULT_DEPTH[self.arch])
        return ModelSpec(self.arch, self.width, depth, self.ending or DEFAULT_ENDING[self.arch])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A saved configuration, each field checked to be of its type (a damaged file is one line, not a crash later)."""
        if not isinstance(data, dict):
            raise InputError(f"a training config must be a JSON object, found {type(data).__name__}")
        fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        unknown = set(data) - set(fields)
        if unknown:
            raise InputError(f"unknown training option(s) in config: {', '.join(sorted(unknown))}")
        for name, value in data.items():
            if not _of_type(value, fields[name]):
                raise InputError(f"config field {name!r} must be {fields[name]}, found {value!r}")
        cfg = cls(**data)
        if cfg.arch not in ARCHS:
            raise InputError(f"config field 'arch': unknown architecture {cfg.arch!r} (known: {', '.join(ARCHS)})")
        check_spec(cfg.model_spec)
        return cfg

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _of_type(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a field's annotation (int, float, str, bool, list[int], each optionally | None)."""
    kinds = {part.strip() for part in annotation.split("|")}
    if value is None:
        return "None" in kinds
    checks = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
              "list[int]": lambda v: isinstance(v, list) and all(isinstance(e, int) and not isinstance(e, bool) for e in v)}
    return any(checks[kind](value) for kind in kinds if kind in checks)


def read_config(path: Path) -> TrainConfig:
    """Read a run's `config.json`."""
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise InputError(f"{path}: not a readable mitosis config ({err})") from err
