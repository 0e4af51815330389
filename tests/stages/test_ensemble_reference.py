"""`ensemble` end to end: every row of ensemble.parquet, of every kind, against a hand computation, through
the Python API (in-memory activations) and the command line (activation files), for both ways of
combining members.

The pool: four networks of width 4 and two of width 8 (the widest), with seeds that are neither 0..P-1
nor given in order, a train split unlike the test split, and member configs from which the parameter
counts follow (an MLP 4-W-W-3: P(W) = 5W + W(W+1) + 3(W+1), so P(8) / P(4) = 139 / 55 and the
same-params ensemble has round(2.53) = 3 members). With ``--repeats 6`` every subset of every size is
enumerated (no size has more than 6), in the order of ``itertools.combinations`` over the pool sorted by
seed. The internal ensemble's chunks follow the stage's seeded rule, a permutation of the W neurons
cut into chunks, from ``default_rng([seed, 1, position in the pool, chunk size])``, one per draw.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.special
import scipy.stats

import mitosis_cli as mitosis
from mitosis_cli.cli.app import main
from mitosis_cli.io.ensemble_tables import EnsembleRows, read_ensemble_table
from mitosis_cli.stages.base import Progress
from mitosis_cli.stages.ensemble import summarise_ensemble

SEEDS = {4: (7, 3, 9, 5), 8: (11, 2)}  # width -> seeds, in the order the files are given
CLASSES, N = 3, {"train": 40, "test": 30}
REPEATS, SEED = 6, 4
INPUT_DIM = 4


def members() -> list[Any]:
    """Networks that saw the same samples: each layer is a noisy random embedding of a shared 3-d signal and
    its head reads the signal back (so the members are better than chance and disagree)."""
    rng = np.random.default_rng(0)
    signal = {s: rng.standard_normal((n, CLASSES)) for s, n in N.items()}
    labels = {s: (z + 0.7 * rng.standard_normal(z.shape)).argmax(1) for s, z in signal.items()}
    nets = []
    for width, seeds in SEEDS.items():
        for seed in seeds:
            embed = rng.standard_normal((CLASSES, width))
            head = 2.0 * np.linalg.pinv(embed).T + 0.3 * rng.standard_normal((CLASSES, width))
            bias = 0.2 * rng.standard_normal(CLASSES)
            splits = {s: (signal[s] @ embed + 0.6 * rng.standard_normal((N[s], width)), labels[s]) for s in N}
            config = {"dataset": f"synthetic:d={INPUT_DIM},classes={CLASSES}", "arch": "mlp", "width": width, "depth": 2,
                      "ending": "relu"}
            nets.append(mitosis.Activations.from_arrays(head, bias, train=splits["train"], test=splits["test"], arch="mlp-2-relu",
                                                        dataset="toy", seed=seed, config=config, name=f"w{width}-s{seed}"))
    return nets


def mlp_parameters(width: int) -> int:
    """Linear(4, W), Linear(W, W), head Linear(W, 3): weights and biases."""
    return (INPUT_DIM + 1) * width + (width + 1) * width + (width + 1) * CLASSES


# ----------------------------------------------------------------------------------------------------------------------
# the hand computation


def ensemble_log_probs(logits: list[np.ndarray], combine: str) -> np.ndarray:
    if combine == "logits":
        return scipy.special.log_softmax(np.sum(logits, axis=0), axis=1)
    return np.log(np.mean([scipy.special.softmax(z, axis=1) for z in logits], axis=0))


def metrics(log_p: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    accuracy = float(np.mean(log_p.argmax(1) == labels))
    return {"accuracy": accuracy, "error": 1.0 - accuracy,
            "cross_entropy": float(-np.mean(log_p[np.arange(len(labels)), labels]))}


def bias_variance(logits: list[np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Heskes' decomposition: loss = mean member CE, bias = CE of the normalised geometric mean q,
    variance = mean KL(q || p_k)."""
    probs = [scipy.special.softmax(z, axis=1) for z in logits]
    rows = np.arange(len(labels))
    loss = float(np.mean([-np.log(p[rows, labels]).mean() for p in probs]))
    geometric = np.exp(np.mean([np.log(p) for p in probs], axis=0))
    q = geometric / geometric.sum(1, keepdims=True)
    bias = float(-np.log(q[rows, labels]).mean())
    variance = float(np.mean([scipy.stats.entropy(q, p, axis=1).mean() for p in probs]))
    return {"loss": loss, "bias": bias, "variance": variance}


def reference(nets: list[Any], combine: str) -> dict[tuple, float]:
    """(kind, width, members, repeat, split, metric) -> value, for every row the table should hold."""
    rows: dict[tuple, float] = {}

    def add(kind: str, width: int, count: int, repeat: int, split: str, values: dict[str, float]) -> None:
        for metric, value in values.items():
            key = (kind, width, count, repeat, split, metric)
            assert key not in rows
            rows[key] = value

    pools = {w: sorted((n for n in nets if n.header.width == w), key=lambda n: n.header.seed) for w in SEEDS}
    widest = max(pools)
    labels = {s: np.asarray(nets[0].labels(s)) for s in N}
    for width, pool in pools.items():
        logits = {s: [np.asarray(n.logits(s), np.float64) for n in pool] for s in N}
        sizes = sorted({2**i for i in range(len(pool).bit_length()) if 2**i < len(pool)} | {len(pool)})
        kinds = {size: ["ensemble"] for size in sizes}
        if width < widest:
            kinds.setdefault(widest // width, []).append("same-total-width")
            same_params = round(mlp_parameters(widest) / mlp_parameters(width))
            kinds.setdefault(same_params, []).append("same-params")
        for size, size_kinds in kinds.items():
            subsets = list(itertools.combinations(range(len(pool)), size))
            assert len(subsets) <= REPEATS  # all of them, in order
            for repeat, subset in enumerate(subsets):
                for split in N:
                    values = metrics(ensemble_log_probs([logits[split][k] for k in subset], combine), labels[split])
                    for kind in size_kinds:
                        add(kind, width, size, repeat, split, values)
        for split in N:
            for net, z in zip(pool, logits[split], strict=True):
                add("wide", width, 1, net.header.seed, split, metrics(scipy.special.log_softmax(z, axis=1), labels[split]))
            add("bias-variance", width, len(pool), 0, split, bias_variance(logits[split], labels[split]))
        if width == widest:
            all_members = metrics(ensemble_log_probs(logits["test"], combine), labels["test"])
            add("error-inf", width, len(pool), 0, "test", {"error": all_members["error"]})
    for position, net in enumerate(pools[widest]):
        weight, bias = (np.asarray(a, np.float64) for a in net.head())
        for chunk in [2**i for i in range(widest.bit_length()) if 2**i < widest]:
            rng = np.random.default_rng([SEED, 1, position, chunk])
            count = widest // chunk
            counts = sorted({2**i for i in range(count.bit_length()) if 2**i < count} | {count})
            for draw in range(REPEATS):
                partition = rng.permutation(widest)[: count * chunk].reshape(count, chunk)
                for split in N:
                    x = np.asarray(net.features(split), np.float64)
                    chunk_logits = [x[:, part] @ weight[:, part].T + bias for part in partition]
                    for k in counts:
                        values = metrics(ensemble_log_probs(chunk_logits[:k], combine), labels[split])
                        add("chunk-average", chunk, k, position * REPEATS + draw, split, values)
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# the tests


def measure(how: str, nets: list[Any], combine: str, folder: Path) -> list[dict]:
    if how == "api":
        settings = mitosis.EnsembleSettings(repeats=REPEATS, seed=SEED, combine=combine)
        return mitosis.measure_ensemble(nets, settings).table.to_pylist()
    paths = [str(mitosis.save_activations(n, folder / f"{n.name}.h5")) for n in nets]
    out = folder / "ensemble.parquet"
    assert main(["ensemble", *paths, "-o", str(out), "--repeats", str(REPEATS), "--seed", str(SEED), "--combine", combine,
                 "-q"]) == 0
    return read_ensemble_table(out)[0].to_pylist()


@pytest.fixture(scope="module")
def nets() -> list[Any]:
    return members()


def test_the_pool_is_what_the_docstring_says(nets) -> None:
    assert round(mlp_parameters(8) / mlp_parameters(4)) == 3 and (mlp_parameters(4), mlp_parameters(8)) == (55, 139)
    from mitosis_cli.models.registry import build_model
    from mitosis_cli.models.spec import ModelSpec

    for width in SEEDS:  # the closed form is the parameter count of the network the configs describe
        model = build_model(ModelSpec("mlp", width, 2, "relu"), (INPUT_DIM,), CLASSES)
        assert sum(p.numel() for p in model.parameters()) == mlp_parameters(width)


@pytest.mark.parametrize("combine", ["logits", "probs"])
@pytest.mark.parametrize("how", ["api", "cli"])
def test_every_row_matches_the_hand_computation(how: str, combine: str, nets, tmp_path: Path) -> None:
    rows = measure(how, nets, combine, tmp_path)
    got = {(r["kind"], r["width"], r["members"], r["repeat"], r["split"], r["metric"]): r["value"] for r in rows}
    assert len(got) == len(rows), "one row per kind, width, members, repeat, split and metric"
    want = reference(nets, combine)
    assert set(got) == set(want), sorted(set(got) ^ set(want))[:10]
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    # the decomposition is exact, and the kinds cover what the module docstring promises
    for width in SEEDS:
        for split in N:
            parts = {m: got[("bias-variance", width, len(SEEDS[width]), 0, split, m)] for m in ("loss", "bias", "variance")}
            assert parts["loss"] == pytest.approx(parts["bias"] + parts["variance"], abs=1e-9)
    assert {k[0] for k in got} == {"ensemble", "wide", "chunk-average", "error-inf", "bias-variance", "same-total-width",
                                   "same-params"}
    # the train and test rows come from different data: a split mix-up cannot pass unnoticed
    assert any(not math.isclose(got[k], got[(*k[:4], "train", k[5])], abs_tol=1e-3)
               for k in got if k[4] == "test" and (*k[:4], "train", k[5]) in got)


# ----------------------------------------------------------------------------------------------------------------------
# the summary of a hand-built table, and what measure_ensemble notes and reports along the way


def _planted_table(with_test: bool = True) -> EnsembleRows:
    """Widths 2, 4 and 8 (the widest). Every row has a test error e (accuracy 1 - e) and a train error e / 2, and
    the values differ between kinds, widths and member counts, so reading the wrong rows changes a number. (The
    table need not be one a pool could produce: same-params has 3 members at two widths so that a reading that
    forgets the width mixes them, and rows at widths 1 and 3 that no pool has.) The error-inf row comes last, after
    other test errors."""
    rows = EnsembleRows()

    def add(kind: str, width: int, members: int, errors: list[float]) -> None:
        for repeat, e in enumerate(errors):
            for split, value in (("test", e), ("train", e / 2)):
                if split == "test" and not with_test:
                    continue
                rows.add(kind, width, members, repeat, split,
                         {"error": value, "accuracy": 1.0 - value, "cross_entropy": 3.0 * value})

    for width, errors in {2: [0.40, 0.36, 0.32, 0.28], 4: [0.25, 0.20, 0.15, 0.20], 8: [0.12, 0.10]}.items():
        add("wide", width, 1, errors)
        if width < 8:  # no ensembles of the widest width
            add("ensemble", width, 1, errors)
    add("ensemble", 2, 2, [0.30, 0.26])
    add("ensemble", 4, 2, [0.14, 0.16, 0.18])
    add("ensemble", 4, 3, [0.13])
    add("same-total-width", 2, 4, [0.22])
    add("same-total-width", 4, 2, [0.15, 0.19])
    add("same-params", 1, 8, [0.05])
    add("same-params", 2, 3, [0.24])
    add("same-params", 3, 2, [0.07])  # two member counts of one kind and width, and a width with no other rows
    add("same-params", 3, 4, [0.08])
    add("same-params", 4, 3, [0.125])
    add("chunk-average", 1, 1, [0.60, 0.62])
    add("chunk-average", 1, 8, [0.45])
    add("chunk-average", 2, 1, [0.50, 0.46])
    add("chunk-average", 2, 2, [0.40])
    add("chunk-average", 2, 4, [0.35])
    add("chunk-average", 4, 1, [0.30, 0.26])
    add("chunk-average", 4, 2, [0.21])
    for width, pool, (loss, bias, variance) in [(2, 4, (0.9, 0.6, 0.3)), (4, 4, (0.7, 0.5, 0.2)), (8, 2, (0.5, 0.4, 0.1))]:
        for split, scale in (("test", 1.0), ("train", 0.5)) if with_test else (("train", 0.5),):
            rows.add("bias-variance", width, pool, 0, split, {"loss": scale * loss, "bias": scale * bias,
                                                                "variance": scale * variance})
    if with_test:
        rows.add("error-inf", 8, 2, 0, "test", {"error": 0.09})
    return rows


def _planted_summary(scale: float) -> dict[str, Any]:
    """The summary of `_planted_table`, by hand, without error_inf; errors times `scale` (1 test, 1/2 train)."""
    def width(networks: int, single: float, members: int, ensemble: float | None, bv: tuple[float, float, float]) -> dict:
        return {"networks": networks, "single_error": scale * single, "ensemble_members": members,
                "ensemble_error": None if ensemble is None else scale * ensemble,
                **{name: scale * v for name, v in zip(("loss", "bias", "variance"), bv, strict=True)}}

    def comparison(kind: str, width: int, members: int, error: float) -> dict:
        return {"kind": kind, "width": width, "members": members, "error": scale * error, "wide_width": 8,
                "wide_error": scale * 0.11}

    return {
        "widths": {"2": width(4, 0.34, 2, 0.28, (0.9, 0.6, 0.3)), "4": width(4, 0.20, 3, 0.13, (0.7, 0.5, 0.2)),
                   "8": width(2, 0.11, 1, None, (0.5, 0.4, 0.1))},  # no ensemble rows of width 8
        "comparisons": [comparison("same-total-width", 2, 4, 0.22), comparison("same-total-width", 4, 2, 0.17),
                        comparison("same-params", 1, 8, 0.05), comparison("same-params", 2, 3, 0.24),
                        comparison("same-params", 3, 2, 0.07), comparison("same-params", 3, 4, 0.08),
                        comparison("same-params", 4, 3, 0.125)],
        # networks with the chunks' total width: of the first kind that has them, in the order ensemble,
        # same-total-width, same-params (chunks of 1: same-params; of 2: same-total-width; of 4: ensemble)
        "internal": [{"chunk_size": 1, "chunks": 8, "one_chunk_error": scale * 0.61, "error": scale * 0.45,
                      "networks_error": scale * 0.05},
                     {"chunk_size": 2, "chunks": 4, "one_chunk_error": scale * 0.48, "error": scale * 0.35,
                      "networks_error": scale * 0.22},
                     {"chunk_size": 4, "chunks": 2, "one_chunk_error": scale * 0.28, "error": scale * 0.21,
                      "networks_error": scale * 0.16}],
    }


def _assert_same(got: Any, want: Any, where: str = "summary") -> None:
    """Equal structure and values, floats to 1e-12."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), (where, list(got), list(want))
        for key in want:
            _assert_same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-12), where
    else:
        assert type(got) is type(want) and got == want, (where, got, want)


def test_the_summary_of_a_planted_table() -> None:
    got = summarise_ensemble(_planted_table().to_table())
    want = {"split": "test", "error_inf": 0.09, "error_inf_width": 8, "error_inf_members": 2,
            "error_inf_status": "rough: an ensemble of only 2 networks of width 8", **_planted_summary(1.0)}
    _assert_same(got, want)
    # without a test split it reads the train rows, and has no error_inf
    got = summarise_ensemble(_planted_table(with_test=False).to_table())
    want = {"split": "train", "error_inf": None, "error_inf_width": None, "error_inf_members": 0,
            "error_inf_status": "undetermined: no test split, or no error-inf row in the table", **_planted_summary(0.5)}
    _assert_same(got, want)


@pytest.mark.parametrize("members, status", [
    (1, "undetermined: a single network of width 16, not an ensemble (train more seeds of the widest width)"),
    (3, "rough: an ensemble of only 3 networks of width 16"),
    (4, "ok"),
])
def test_error_inf_status_by_the_networks_it_rests_on(members: int, status: str) -> None:
    rows = EnsembleRows()
    rows.add("error-inf", 16, members, 0, "test", {"error": 0.0625})
    want = {"split": "test", "error_inf": 0.0625, "error_inf_width": 16, "error_inf_members": members,
            "error_inf_status": status, "widths": {}, "comparisons": [], "internal": []}
    _assert_same(summarise_ensemble(rows.to_table()), want)


def test_the_summary_of_an_empty_table() -> None:
    _assert_same(summarise_ensemble(EnsembleRows().to_table()),
                 {"split": "train", "error_inf": None, "error_inf_width": None, "error_inf_members": 0,
                  "error_inf_status": "undetermined: no test split, or no error-inf row in the table",
                  "widths": {}, "comparisons": [], "internal": []})


def _net(width: int, seed: int, splits: dict[str, tuple[np.ndarray, np.ndarray]], config: dict[str, Any]) -> Any:
    """A member whose logits are the first three features (head [I 0], no bias)."""
    head = np.hstack([np.eye(CLASSES), np.zeros((CLASSES, width - CLASSES))])
    return mitosis.Activations.from_arrays(head, np.zeros(CLASSES), **splits, dataset="toy", seed=seed, config=config,
                                           name=f"w{width}-s{seed}")


def _mlp_config(width: int, **more: Any) -> dict[str, Any]:
    return {"dataset": f"synthetic:d={INPUT_DIM},classes={CLASSES}", "arch": "mlp", "width": width, "depth": 2, **more}


def test_notes_and_progress_of_what_was_skipped() -> None:
    """No test split, sizes above the pools, a width that does not divide the widest, one that divides it with too
    few networks, and parameter counts known for the widest networks only."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, CLASSES, 5)
    nets = [_net(w, s, {"train": (rng.standard_normal((5, w)), labels)}, _mlp_config(w) if w == 12 else {})
            for w in (4, 5, 12) for s in (0, 1)]
    steps: list[Progress] = []
    settings = mitosis.EnsembleSettings(members=(3,), repeats=1, chunk_sizes=(4,))
    measured = mitosis.measure_ensemble(nets, settings, on_step=steps.append)
    assert measured.notes == [
        "same-params skipped: parameter counts unknown (no arch/width/depth/dataset in the files' config); "
        "give --params-per-width",
        "width 4: pool of 2 networks; sizes above 2 skipped",
        "same-total-width: width 4 needs 3 networks, the pool has 2; skipped",
        "width 5: pool of 2 networks; sizes above 2 skipped",
        "same-total-width: width 5 does not divide the widest width 12; skipped",
        "width 12: pool of 2 networks; sizes above 2 skipped",
        "error-inf not written: the inputs have no test split",
    ]
    kinds = {(r["kind"], r["width"]) for r in measured.table.to_pylist()}
    assert kinds == {(kind, w) for kind in ("wide", "bias-variance") for w in (4, 5, 12)} | {("chunk-average", 4)}
    # one step per width, then one per network of the widest width
    assert [(p.task, p.done, p.total) for p in steps] == [("ensemble", k, 5) for k in (1, 2, 3, 4, 5)]


@pytest.mark.parametrize("params_per_width, ending, same_params, members", [
    (None, None, 3, 2),  # counted from the configs, an MLP's default ending (relu): round(P(8) / P(4)) = round(139 / 55)
    (None, "batchnorm", 2, 2),  # with BatchNorm: round(155 / 63)
    (1.0, None, 2, 1),  # 1 x W parameters: round(8 / 4); no --members size is a comparison's size
])
def test_same_params_and_error_inf_of_the_chosen_combine(params_per_width: float | None, ending: str | None,
                                                         same_params: int, members: int) -> None:
    # the two widest networks disagree on sample 0 (label 0): summing logits says class 1, averaging probabilities
    # says class 0 (0.45 against 0.39); both are right on sample 1
    planted = [np.array([[3.0, 0.0, 0.0], [0.0, 0.0, 4.0]]), np.array([[-20.0, 1.0, 0.0], [0.0, 0.0, 5.0]])]
    labels = np.array([0, 2])
    assert [ensemble_log_probs(planted, c).argmax(1).tolist() for c in ("logits", "probs")] == [[1, 2], [0, 2]]
    rng = np.random.default_rng(2)
    nets = []
    for width, seeds in ((4, (0, 1, 2)), (8, (0, 1))):
        config = _mlp_config(width, **({"ending": ending} if ending else {}))
        for seed in seeds:
            features = rng.standard_normal((2, width))
            if width == 8:
                features[:, :CLASSES] = planted[seed]
            nets.append(_net(width, seed, {"test": (features, labels)}, config))
    settings = mitosis.EnsembleSettings(members=(members,), repeats=1, combine="probs", chunk_sizes=(4,),
                                        params_per_width=params_per_width)
    measured = mitosis.measure_ensemble(nets, settings)
    assert measured.notes == []  # two networks of width 8 are enough for ensembles of two
    rows = measured.table.to_pylist()
    assert {(r["kind"], r["width"], r["members"]) for r in rows if r["kind"] not in ("wide", "chunk-average")} == {
        ("ensemble", 4, members), ("ensemble", 8, members), ("same-total-width", 4, 2), ("same-params", 4, same_params),
        ("bias-variance", 4, 3), ("bias-variance", 8, 2), ("error-inf", 8, 2)}
    error_inf = [r for r in rows if r["kind"] == "error-inf"]
    assert [(r["width"], r["members"], r["split"], r["metric"]) for r in error_inf] == [(8, 2, "test", "error")]
    assert error_inf[0]["value"] == metrics(ensemble_log_probs(planted, "probs"), labels)["error"] == 0.0


def test_the_draws_follow_the_seed() -> None:
    """Ensembles of 2 of 6 networks, 3 of the 15 subsets drawn: the same seed draws the same, another seed not."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, CLASSES, 8)
    nets = [_net(3, s, {"test": (rng.standard_normal((8, 3)), labels)}, {}) for s in range(6)]

    def ensembles(seed: int) -> list[dict]:
        settings = mitosis.EnsembleSettings(members=(2,), repeats=3, seed=seed, chunk_sizes=(1,))
        return [r for r in mitosis.measure_ensemble(nets, settings).table.to_pylist() if r["kind"] == "ensemble"]

    first = ensembles(0)
    assert len(first) == 3 * 3 and first == ensembles(0) and first != ensembles(1)
