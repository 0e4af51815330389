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
from mitosis_cli.io.ensemble_tables import read_ensemble_table

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
