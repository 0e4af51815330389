"""The import stage: features that already exist (a .npz, .npy, .pt or .safetensors dump) to an activation file.

`io.feature_dumps` reads the formats and checks the keys (train_features, train_labels, test_features,
test_labels, optional head_weight/head_bias, train_logits/test_logits, class_names); this stage names
the network, stamps the output with the dump's sha256 and the options, and streams row blocks into
the HDF5 file, so N is bounded by the disk. Without a head the file holds no head: `clones` then
measures what needs none.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mitosis_cli.io.activations import ActivationHeader, Batch, write_activations
from mitosis_cli.io.checks import MAX_CLASSES, check_finite
from mitosis_cli.io.feature_dumps import DumpLayout, FeatureDump, check_dump, open_dump
from mitosis_cli.io.stamp import Decision
from mitosis_cli.stages.base import OnStep, Progress, StageSettings, no_progress, option_words, paths_after_options
from mitosis_cli.stages.checks import check_int, check_seed
from mitosis_cli.stages.extract import activation_stamp
from mitosis_cli.stages.transaction import OutputTransaction

BLOCK_BYTES = 64 << 20  # float32 feature rows read and written at a time


@dataclass(frozen=True)
class ImportSettings(StageSettings):
    """Options of `mitosis import`.

    Attributes
    ----------
    source : Path
        A .npz, .pt or .safetensors file, a ``[PREFIX]KEY.npy`` file, or a folder of ``KEY.npy`` files.
    out : Path or None
        The activation file (default: SOURCE with the suffix .h5; for a folder, FOLDER/acts.h5).
    arch, dataset, seed
        What the network is and was trained on, when known: they name it in tables, figures and ensembles.
    num_classes : int or None
        C when the dump has neither head, logits nor class names (default: the largest label + 1).
    force : bool
        Replace an existing output made from other inputs or options.
    """

    stage = "import"
    source: Path = Path("features.npz")
    out: Path | None = None
    arch: str = ""
    dataset: str = ""
    seed: int | None = None
    num_classes: int | None = None
    force: bool = False

    @property
    def target(self) -> Path:
        if self.out is not None:
            return self.out
        return self.source / "acts.h5" if self.source.is_dir() else self.source.with_suffix(".h5")

    def to_argv(self) -> list[str]:
        words = option_words([("out", self.out), ("arch", self.arch or None), ("dataset", self.dataset or None),
                              ("seed", self.seed), ("num-classes", self.num_classes), ("force", self.force or None)])
        return ["import", *words, *paths_after_options([self.source])]

    def check(self) -> None:
        """The ranges of --num-classes and --seed."""
        check_int("--num-classes", self.num_classes, 1, MAX_CLASSES)
        if self.seed is not None:
            check_seed(self.seed)


@dataclass(frozen=True)
class ImportResult:
    acts: Path
    skipped: bool
    splits: dict[str, int]  # split -> rows
    width: int
    num_classes: int
    has_head: bool
    label: str

    def to_json(self) -> dict[str, Any]:
        return {"acts": str(self.acts), "skipped": self.skipped, "splits": self.splits, "width": self.width,
                "num_classes": self.num_classes, "has_head": self.has_head}


def _head(dump: FeatureDump, layout: DumpLayout) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not layout.has_head:
        return None, None
    weight = dump.read("head_weight").astype(np.float32)
    bias = dump.read("head_bias").astype(np.float32)
    check_finite(dump.name, "head_weight", weight)
    check_finite(dump.name, "head_bias", bias)
    return weight, bias


def _blocks(dump: FeatureDump, layout: DumpLayout, split: str, head: tuple[np.ndarray | None, np.ndarray | None],
            on_step: OnStep, label: str) -> Iterator[Batch]:
    """Row blocks of (features, logits, labels): logits as given, else from the head, else None."""
    rows = max(1, BLOCK_BYTES // (4 * layout.width))
    weight, bias = head
    logits = dump.blocks(f"{split}_logits", rows) if f"{split}_logits" in dump.info() else None
    start = 0
    for block in dump.blocks(f"{split}_features", rows):
        features = np.asarray(block, dtype=np.float32)
        check_finite(dump.name, f"{split}_features", features)
        if logits is not None:
            scores = np.asarray(next(logits), dtype=np.float32)
            check_finite(dump.name, f"{split}_logits", scores)
        else:
            scores = None if weight is None or bias is None else features @ weight.T + bias
        stop = start + len(features)
        yield features, scores, layout.labels[split][start:stop]
        start = stop
        on_step(Progress(f"import {split}", stop, layout.rows[split], label))


def run_import(settings: ImportSettings, on_step: OnStep = no_progress) -> ImportResult:
    """`mitosis import`: check the dump, then stream it into an activation file unless the target is current."""
    settings.check()
    dump = open_dump(settings.source)
    layout = check_dump(dump, settings.num_classes)
    target = settings.target
    tx = OutputTransaction(files=(target,), inputs=(settings.source, *dump.files))
    config = {"imported": "npy" if settings.source.is_dir() else settings.source.suffix.lower().lstrip("."),
              "keys": sorted(dump.info()), "arch": settings.arch, "dataset": settings.dataset, "seed": settings.seed,
              "num_classes": settings.num_classes}
    header = ActivationHeader(
        width=layout.width, num_classes=layout.num_classes, dataset=settings.dataset, arch=settings.arch or "imported",
        seed=-1 if settings.seed is None else settings.seed, epoch=-1, layer=f"imported ({config['imported']})", config=config,
        source_sha256=dump.sha256(), splits=layout.rows, class_names=layout.class_names, has_head=layout.has_head,
        has_logits=layout.has_logits)
    with tx.locked():
        decision = tx.decide(header.stamp(), activation_stamp, settings.force)
        if decision is Decision.WRITE:
            head = _head(dump, layout)
            streams = {split: (n, _blocks(dump, layout, split, head, on_step, header.label)) for split, n in layout.rows.items()}
            write_activations(target, header, *head, streams)
    on_step(Progress("import", 1, 1, f"{'current' if decision is Decision.SKIP else 'wrote'} {target}"))
    return ImportResult(target, decision is Decision.SKIP, dict(layout.rows), layout.width, layout.num_classes,
                        layout.has_head, header.label)
