"""The ensemble stage: wide networks against deep ensembles of narrower ones, and against their own chunks.

`measure_ensemble` works on activation files or in-memory `Activations` of networks that saw the same
samples and returns the ensemble table (kinds: see io/ensemble_tables); `summarise_ensemble` reads
its key numbers; `run_ensemble` is the command, with the stamp and the atomic write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mitosis_cli.analysis import ensembles as ens
from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import ActivationFile, ActivationSource, check_logits
from mitosis_cli.io.ensemble_tables import EnsembleRows, read_ensemble_table, write_ensemble_table
from mitosis_cli.io.stamp import Decision, Stamp
from mitosis_cli.io.tables import input_records, provenance, table_stamp
from mitosis_cli.stages.base import OnStep, Progress, StageSettings, no_progress, option_words, paths_after_options
from mitosis_cli.stages.checks import MAX_REPEATS, check_float, check_int, check_seed
from mitosis_cli.stages.transaction import OutputTransaction

ROUGH_ERROR_INF_MEMBERS = 4  # error_inf from fewer members is still far from the infinite-ensemble limit
# Stream tags keep the random draws of ensembles and of chunks independent of each other and of other options.
_ENSEMBLE_STREAM, _CHUNK_STREAM = 0, 1


@dataclass(frozen=True)
class EnsembleSettings(StageSettings):
    """Options of `mitosis ensemble`.

    Attributes
    ----------
    inputs : tuple of Path
        Activation files of networks trained with different seeds (one or several widths).
    out : Path
        The table to write.
    members : tuple of int or None
        Ensemble sizes K (default: 1, 2, 4, ... and the pool size).
    repeats : int
        Random subsets per ensemble size, and random chunk draws per chunk size.
    seed : int
        Seed of the subset and chunk draws.
    combine : str
        ``logits``: sum the members' logits (the paper); ``probs``: average their probabilities.
    chunk_sizes : tuple of int or None
        Chunk sizes of the internal ensemble (default: powers of two below the widest W).
    params_per_width : float or None
        Parameters per last-layer unit, for same-params ensembles (default: counted from the config).
    force : bool
        Redo existing work.
    """

    stage = "ensemble"
    inputs: tuple[Path, ...] = ()
    out: Path = Path("ensemble.parquet")
    members: tuple[int, ...] | None = None
    repeats: int = 10
    seed: int = 0
    combine: str = "logits"
    chunk_sizes: tuple[int, ...] | None = None
    params_per_width: float | None = None
    force: bool = False

    def to_argv(self) -> list[str]:
        default = EnsembleSettings()
        changed = [(name, getattr(self, key)) for key, name in (
            ("out", "out"), ("members", "members"), ("repeats", "repeats"), ("seed", "seed"), ("combine", "combine"),
            ("chunk_sizes", "chunk-size"), ("params_per_width", "params-per-width"),
        ) if getattr(self, key) != getattr(default, key)]
        return ["ensemble", *option_words([*changed, ("force", self.force or None)]), *paths_after_options(self.inputs)]

    def options(self) -> dict[str, Any]:
        """The options that determine the table's numbers."""
        return {"sizes": list(self.members) if self.members else None, "repeats": self.repeats, "seed": self.seed,
                "combine": self.combine, "chunk_sizes": list(self.chunk_sizes) if self.chunk_sizes else None,
                "params_per_width": self.params_per_width}

    def check(self) -> None:
        """Refuse option values no ensemble can use."""
        if self.combine not in ens.COMBINES:
            raise InputError(f"--combine {self.combine!r}: choose {' or '.join(ens.COMBINES)}")
        check_float("--params-per-width", self.params_per_width, above=0.0)
        check_int("--repeats", self.repeats, 1, MAX_REPEATS)
        check_seed(self.seed)
        for members in self.members or ():
            check_int("--members", members, 1)
        for size in self.chunk_sizes or ():
            check_int("--chunk-size", size, 1)


@dataclass(frozen=True)
class MemberSet:
    """Networks that saw the same samples: their logits per split, stacked in `members` order."""

    members: list[ActivationSource]
    labels: dict[str, np.ndarray]  # split -> (N,) int64
    logits: dict[str, np.ndarray]  # split -> (P, N, C) float32

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.labels)

    def pools(self) -> dict[int, list[int]]:
        """Width -> indices into `members` of that width, ordered by seed; widths ascending."""
        by_width: dict[int, list[int]] = {}
        order = sorted(range(len(self.members)), key=lambda i: (self.members[i].header.width, self.members[i].header.seed))
        for i in order:
            by_width.setdefault(self.members[i].header.width, []).append(i)
        return by_width


def _same(first: ActivationSource, other: ActivationSource, what: str, a: Any, b: Any) -> None:
    if a != b:
        raise InputError(f"{other.name}: {what} is {b!r} but {first.name} has {a!r}; "
                         "ensemble members must be evaluated on the same samples")


def gather_members(sources: Sequence[ActivationSource]) -> MemberSet:
    """The logits and labels of every member, refusing sets that did not see the same samples.

    Checks, each failing with one `InputError` line naming the network: the same splits, number of classes, data set,
    and sample count; real inputs (the Gaussian-noise control draws new inputs per seed); identical labels in the same
    order on every split; no two members of one width
    with the same seed (the same network twice would fake an independent member).
    """
    labels: dict[str, np.ndarray] = {}
    logits: dict[str, list[np.ndarray]] = {}
    seen: dict[tuple[int, int], str] = {}
    first = sources[0]
    for source in sources:
        header = source.header
        if header.inputs != "data":
            raise InputError(f"{source.name}: activations of {header.inputs!r} inputs (a control); "
                             "its samples differ per seed, so it cannot be ensembled")
        _same(first, source, "the set of splits", sorted(first.header.splits), sorted(header.splits))
        _same(first, source, "the number of classes", first.header.num_classes, header.num_classes)
        _same(first, source, "the data set", first.header.dataset, header.dataset)
        for split, n in header.splits.items():
            _same(first, source, f"the number of {split} samples", first.header.splits[split], n)
        key = (header.width, header.seed)
        if key in seen:
            raise InputError(f"{source.name}: width {header.width} seed {header.seed} was already given by {seen[key]}; "
                             "pass each network once (members need different seeds)")
        seen[key] = source.name
        for split in header.splits:
            split_labels = source.labels(split)
            if split not in labels:
                labels[split] = split_labels
            elif not np.array_equal(labels[split], split_labels):
                first_diff = int(np.argmax(labels[split] != split_labels))
                raise InputError(f"{source.name}: {split} labels differ from {first.name} (first at sample {first_diff}); "
                                 "members must see the same samples in the same order")
            logits.setdefault(split, []).append(source.logits(split))
    return MemberSet(list(sources), labels, {split: np.stack(arrays) for split, arrays in logits.items()})


def _member_params(source: ActivationSource, params_per_width: float | None) -> float | None:
    """Parameters of one member: `params_per_width` x W when given, else counted from the training config."""
    header = source.header
    if params_per_width is not None:
        return params_per_width * header.width
    cfg = header.config
    if not all(cfg.get(key) is not None for key in ("dataset", "arch", "width", "depth")):
        return None
    from mitosis_cli.data.registry import dataset_input_shape
    from mitosis_cli.models.registry import count_parameters
    from mitosis_cli.models.spec import DEFAULT_ENDING, ModelSpec

    try:  # the files' config is free-form: a value of another type means the count is unknown, as a missing one does
        ending = cfg.get("ending") or DEFAULT_ENDING.get(cfg["arch"], "relu")
        spec = ModelSpec(cfg["arch"], int(cfg["width"]), int(cfg["depth"]), ending)
        return float(count_parameters(spec, dataset_input_shape(str(cfg["dataset"])), header.num_classes))
    except (InputError, ValueError, TypeError, KeyError):
        return None


@dataclass(frozen=True)
class EnsembleTable:
    """The ensemble table (pyarrow; ``.to_pandas()`` for pandas) and notes on what was skipped and why."""

    table: pa.Table
    notes: list[str]


def check_members(sources: Sequence[ActivationSource], settings: EnsembleSettings) -> None:
    """Refuse, from the headers alone and before any work, pools and options no ensemble can use."""
    settings.check()
    if len(sources) < 2:
        raise InputError(f"an ensemble needs at least 2 activation files (networks trained with different seeds), "
                         f"got {len(sources)}")
    for source in sources:  # imported features may come without a head and logits: members are their logits
        check_logits(source)
    widths = [source.header.width for source in sources]
    if max(widths.count(w) for w in set(widths)) < 2:
        raise InputError("every width has a single network: an ensemble needs at least 2 seeds of one width",
                         hint="train more seeds, e.g. mitosis train --seed 1 ...")
    if settings.chunk_sizes is not None and max(settings.chunk_sizes) >= max(widths):
        raise InputError(f"--chunk-size {max(settings.chunk_sizes)}: chunks must be narrower than the widest networks "
                         f"(W = {max(widths)})")


def measure_ensemble(sources: Sequence[ActivationSource], settings: EnsembleSettings = EnsembleSettings(),
                     on_step: OnStep = no_progress) -> EnsembleTable:
    """Every kind of the ensemble table for these networks (see io/ensemble_tables for the kinds)."""
    check_members(sources, settings)
    found = gather_members(sources)
    pools = found.pools()
    widest = max(pools)
    rows = EnsembleRows()
    notes: list[str] = []
    sizes, repeats, seed, combine = settings.members, settings.repeats, settings.seed, settings.combine
    params = {w: _member_params(found.members[pool[0]], settings.params_per_width) for w, pool in pools.items()}
    if any(p is None for p in params.values()):
        notes.append("same-params skipped: parameter counts unknown (no arch/width/depth/dataset in the files' config); "
                     "give --params-per-width")
    chunk_list = settings.chunk_sizes or [2**i for i in range(widest.bit_length()) if 2**i < widest]
    total, done = len(pools) + len(pools[widest]), 0
    for width, pool in pools.items():
        pool_logits = {split: logits[pool] for split, logits in found.logits.items()}
        wanted = ens.ensemble_sizes(len(pool), sizes)
        if sizes is not None and max(sizes) > len(pool):
            notes.append(f"width {width}: pool of {len(pool)} networks; sizes above {len(pool)} skipped")
        compare: dict[str, int] = {}
        if width < widest:
            if widest % width == 0:
                compare["same-total-width"] = widest // width
            else:
                notes.append(f"same-total-width: width {width} does not divide the widest width {widest}; skipped")
            if params[width] is not None and params[widest] is not None:
                compare["same-params"] = ens.same_params_members(params[widest], params[width])
        for kind, size in list(compare.items()):
            if size > len(pool):
                notes.append(f"{kind}: width {width} needs {size} networks, the pool has {len(pool)}; skipped")
                del compare[kind]
        for size in sorted(set(wanted) | set(compare.values())):
            rng = np.random.default_rng([seed, _ENSEMBLE_STREAM, width, size])
            for m in ens.ensemble_curve(pool_logits, found.labels, [size], repeats, rng, combine):
                kinds = (["ensemble"] if size in wanted else []) + [k for k, s in compare.items() if s == size]
                for kind in kinds:
                    rows.add(kind, width, m.members, m.repeat, m.split, m.values)
        for split, logits in pool_logits.items():
            for member, member_logits in zip(pool, logits, strict=True):
                values = ens.classification_metrics(ens.log_softmax(member_logits), found.labels[split])
                rows.add("wide", width, 1, found.members[member].header.seed, split, values)
            if len(pool) >= 2:
                rows.add("bias-variance", width, len(pool), 0, split, ens.bias_variance(logits, found.labels[split]))
        if width == widest and "test" in pool_logits:
            log_p = ens.combine_members(pool_logits["test"], combine)
            error = ens.classification_metrics(log_p, found.labels["test"])["error"]
            rows.add("error-inf", width, len(pool), 0, "test", {"error": error})
        done += 1
        on_step(Progress("ensemble", done, total, f"ensembles of width {width} ({len(pool)} networks)", unit="step"))
    if "test" not in found.logits:
        notes.append("error-inf not written: the inputs have no test split")
    for position, member in enumerate(pools[widest]):
        source = found.members[member]
        weight, bias = source.head()
        features = {split: source.features(split) for split in found.splits}
        for chunk in chunk_list:
            rng = np.random.default_rng([seed, _CHUNK_STREAM, position, chunk])
            counts = ens.ensemble_sizes(widest // chunk)
            for draw in range(repeats):
                partition = ens.random_partition(widest, chunk, rng)  # the same chunks on every split
                for split, feats in features.items():
                    by_count = ens.chunk_ensemble_metrics(feats, weight, bias, found.labels[split], partition, counts, combine)
                    for count, values in by_count.items():
                        rows.add("chunk-average", chunk, count, position * repeats + draw, split, values)
        done += 1
        on_step(Progress("ensemble", done, total, f"chunks of {source.header.label}", unit="step"))
    return EnsembleTable(rows.to_table(), notes)


def summarise_ensemble(table: pa.Table) -> dict[str, Any]:
    """Key numbers of an ensemble table, on the test split when there is one (else train)."""
    cols = {name: np.asarray(table.column(name).to_pylist()) for name in table.column_names}
    split = "test" if "test" in set(cols["split"].tolist()) else "train"

    def mean(kind: str, metric: str = "error", **where: int) -> float | None:
        mask = (cols["kind"] == kind) & (cols["split"] == split) & (cols["metric"] == metric)
        for name, value in where.items():
            mask &= cols[name] == value
        return float(cols["value"][mask].mean()) if mask.any() else None

    def members_of(kind: str, width: int) -> list[int]:
        return sorted(set(cols["members"][(cols["kind"] == kind) & (cols["width"] == width)].tolist()))

    widths: dict[str, Any] = {}
    wide_widths = sorted(set(cols["width"][cols["kind"] == "wide"].tolist()))
    for width in wide_widths:
        largest = max(members_of("ensemble", width), default=1)
        networks = int(((cols["kind"] == "wide") & (cols["width"] == width) & (cols["split"] == split)
                        & (cols["metric"] == "error")).sum())
        widths[str(width)] = {
            "networks": networks, "single_error": mean("wide", width=width),
            "ensemble_members": largest, "ensemble_error": mean("ensemble", width=width, members=largest),
            **{name: mean("bias-variance", name, width=width) for name in ("loss", "bias", "variance")},
        }
    comparisons = []
    widest = max(wide_widths, default=0)
    for kind in ("same-total-width", "same-params"):
        for width in sorted(set(cols["width"][cols["kind"] == kind].tolist())):
            for members in members_of(kind, width):
                comparisons.append({"kind": kind, "width": width, "members": members,
                                    "error": mean(kind, width=width, members=members),
                                    "wide_width": widest, "wide_error": mean("wide", width=widest)})
    internal = []
    for chunk in sorted(set(cols["width"][cols["kind"] == "chunk-average"].tolist())):
        count = max(members_of("chunk-average", chunk))
        networks_error = [mean(kind, width=chunk, members=count) for kind in ("ensemble", "same-total-width", "same-params")]
        internal.append({"chunk_size": chunk, "chunks": count, "one_chunk_error": mean("chunk-average", width=chunk, members=1),
                         "error": mean("chunk-average", width=chunk, members=count),
                         "networks_error": next((e for e in networks_error if e is not None), None)})
    return {"split": split, **_error_inf(cols), "widths": widths, "comparisons": comparisons, "internal": internal}


def _error_inf(cols: dict[str, np.ndarray]) -> dict[str, Any]:
    """error_inf (the test error of the largest ensemble of the widest networks) with what it rests on and its status:
    ``ok``, ``rough: ...`` (an ensemble of two or three networks) or ``undetermined: ...`` (one network, no test split)."""
    rows = (cols["kind"] == "error-inf") & (cols["split"] == "test") & (cols["metric"] == "error")
    if not rows.any():
        return {"error_inf": None, "error_inf_width": None, "error_inf_members": 0,
                "error_inf_status": "undetermined: no test split, or no error-inf row in the table"}
    value, width, members = (float(cols["value"][rows][0]), int(cols["width"][rows][0]), int(cols["members"][rows][0]))
    if members < 2:
        status = (f"undetermined: a single network of width {width}, not an ensemble (train more seeds of the widest "
                  "width)")
    elif members < ROUGH_ERROR_INF_MEMBERS:
        status = f"rough: an ensemble of only {members} networks of width {width}"
    else:
        status = "ok"
    return {"error_inf": value, "error_inf_width": width, "error_inf_members": members, "error_inf_status": status}


@dataclass(frozen=True)
class EnsembleResult:
    """What `run_ensemble` did: the table it wrote (or found current), its notes and key numbers."""

    output: Path
    skipped: bool
    rows: int
    notes: list[str]
    summary: dict[str, Any]
    networks: str  # e.g. "4 of width 16, 2 of width 64", empty when skipped

    def to_json(self) -> dict[str, Any]:
        return {"output": str(self.output), "skipped": self.skipped, "rows": self.rows, "notes": self.notes, **self.summary}


def _table_stamp(path: Path) -> Stamp | None:
    """The stamp of the ensemble table at `path`; None when it is not one (or damaged)."""
    try:
        return table_stamp(read_ensemble_table(path)[1], "ensemble")
    except InputError:
        return None


def run_ensemble(settings: EnsembleSettings, on_step: OnStep = no_progress) -> EnsembleResult:
    """`mitosis ensemble`: measure the input files and write the ensemble table (skip or refuse by its stamp)."""
    settings.check()
    sources = [ActivationFile(p) for p in settings.inputs]  # a missing or malformed file fails here, before hashing
    check_members(sources, settings)
    tx = OutputTransaction(files=(settings.out,), inputs=settings.inputs)
    inputs = input_records(settings.inputs)
    wanted = Stamp.of("ensemble", [i["sha256"] for i in inputs], settings.options())
    with tx.locked():
        decision = tx.decide(wanted, _table_stamp, settings.force)
        notes: list[str] = []
        described = ""
        if decision is Decision.WRITE:
            measured = measure_ensemble(sources, settings, on_step)
            notes = measured.notes
            pools: dict[int, int] = {}
            for source in sources:
                pools[source.header.width] = pools.get(source.header.width, 0) + 1
            described = ", ".join(f"{n} of width {w}" for w, n in sorted(pools.items()))
            write_ensemble_table(settings.out, measured.table, provenance("ensemble", inputs, settings.options(),
                                                                          settings.command()))
    table, _ = read_ensemble_table(settings.out)
    return EnsembleResult(settings.out, decision is Decision.SKIP, table.num_rows, notes, summarise_ensemble(table), described)

