"""`clones` end to end: every number of clones.parquet and clones-summary.parquet against a reference
computed here, through the Python API (in-memory activations) and the command line (activation files).

The references are independent of the package's estimators: the restricted head by hand, the probe and
the reconstruction with scikit-learn's Ridge fitted on the split the protocol names, R^2 with
``r2_score(multioutput="variance_weighted")``, residual correlations (ours and the paper's ``mean_corr``)
and shape with numpy/scipy, the Information Imbalance by brute force, the collapse diagnostics (top-(C-1)
variance share, participation ratio, NC1) from the eigenvalues and class scatters of each split, the
summary's statistics, clone size, its interval, 1 - R^2 at the clone size, the growth fit, the
excess-error constant and the regime word by their closed forms and stated rules, and each row's status.
The package is used only to know which neurons a chunk holds (`draw_chunks`), which rows the Information
Imbalance subsamples (the seeded rule of the stage) and to read the tables.

The planted layer makes the splits differ (the train split is noisier, shifted and has more label
noise, and has another number of rows) and every neuron differ (its own gain, noise and head weight),
so measuring on the wrong split, fitting on the wrong split, using other neurons or a permuted head
moves the numbers far beyond the tolerances; `test_the_references_see_the_bugs` checks that it does.
The R^2 threshold puts a grid size between each end of the clone-size interval and the estimate, so the
excess-error fit and the interval ends are seen to use the right one. Two more layers have answers in
closed form: mixtures of four signals (the growth of the number of clones is a known hinge), and exact
copies at a large scale (singular Gram matrices: the eigendecomposition branch of the ridge solve). A
family of widths with a collapsed layer, noisy clones and a clone size that grows with the width gives
each regime word its turn. A split streamed in many small blocks, and a file with one split, give the
reference rows too; the per-network facts read back from the summary (`networks_from_summary`) are the
reference's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import scipy.stats
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

import mitosis_cli as mitosis
from mitosis_cli.analysis.chunks import draw_chunks
from mitosis_cli.cli.app import main
from mitosis_cli.io.clone_tables import SUMMARY_SCHEMA, read_clones, read_clones_summary
from mitosis_cli.stages import clones as clones_stage
from mitosis_cli.stages.clone_summary import networks_from_summary

ALPHA = 1e-8  # the paper's ridge penalty, recorded in the tables' options as ridge_alpha
OPTIONS = {"repeats": 4, "acc_repeats": 6, "seed": 5, "rescale": True, "r2_threshold": 0.92, "ii_points": 60, "ii_k": 2,
           "error_inf": 0.05}
NETWORKS = ((32, 1), (16, 2))  # (width, seed of the planted data)


def planted(width: int, seed: int, latent: int = 6, classes: int = 4, n_train: int = 150, n_test: int = 120) -> Any:
    """A layer of noisy copies of a `latent`-dimensional signal with a head that reads the signal.

    Each neuron has its own gain, noise level (Gaussian or Laplace) and head weight; the train split is
    noisier, scaled and shifted, with 25% random labels (10% on test) and 150 rows against 120.
    """
    rng = np.random.default_rng(seed)
    copy_of = np.arange(width) % latent
    gain = rng.uniform(0.6, 1.4, width)
    sigma_test = rng.uniform(0.05, 0.3, width)
    readout = rng.standard_normal((classes, latent))
    counts = np.bincount(copy_of, minlength=latent)
    head = readout[:, copy_of] * rng.uniform(0.5, 1.5, width) / counts[copy_of]
    bias = 0.1 * rng.standard_normal(classes)
    laplace = rng.random(width) < 0.5
    splits = {}
    for split, n, scale, shift, sigma, flips in (("train", n_train, 1.3, 0.3, 2 * sigma_test, 0.25),
                                                 ("test", n_test, 1.0, 0.0, sigma_test, 0.1)):
        signal = scale * rng.standard_normal((n, latent)) + shift
        noise = np.where(laplace, rng.laplace(size=(n, width)) / np.sqrt(2), rng.standard_normal((n, width)))
        labels = (signal @ readout.T).argmax(1)
        flip = rng.random(n) < flips
        labels[flip] = rng.integers(0, classes, int(flip.sum()))
        splits[split] = (signal[:, copy_of] * gain + sigma * noise, labels)
    return mitosis.Activations.from_arrays(head, bias, train=splits["train"], test=splits["test"], arch="planted",
                                           dataset="toy", seed=seed, epoch=3, name=f"planted-w{width}")


# ----------------------------------------------------------------------------------------------------------------------
# references


def chunk_accuracy(x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray, chunk: np.ndarray,
                   scale: float = 1.0) -> float:
    """Accuracy of the trained head restricted to the chunk: argmax of scale * X[:, S] A[:, S]^T + b."""
    logits = scale * (x[:, chunk] @ weight[:, chunk].T) + bias
    return float(np.mean(logits.argmax(1) == y))


def probe_accuracy(fit: tuple[np.ndarray, np.ndarray], score: tuple[np.ndarray, np.ndarray], chunk: np.ndarray,
                   classes: int) -> float:
    """scikit-learn Ridge (alpha, intercept) from the chunk to one-hot labels, fitted on `fit`, scored on `score`."""
    model = Ridge(alpha=ALPHA, fit_intercept=True).fit(fit[0][:, chunk], np.eye(classes)[fit[1]])
    return float(np.mean(model.predict(score[0][:, chunk]).argmax(1) == score[1]))


def reconstruction(fit: np.ndarray, score: np.ndarray, chunk: np.ndarray) -> tuple[float, np.ndarray]:
    """Variance-weighted R^2 of the Ridge from X_fit[:, S] to X_fit, scored on `score`, and the residuals there."""
    model = Ridge(alpha=ALPHA, fit_intercept=True).fit(fit[:, chunk], fit)
    predicted = model.predict(score[:, chunk])
    return float(r2_score(score, predicted, multioutput="variance_weighted")), score - predicted


def residual_correlations(residuals: np.ndarray, chunk: np.ndarray) -> tuple[float, float]:
    """Mean |off-diagonal| and RMS off-diagonal correlation of the residuals of the neurons outside the chunk."""
    outside = np.setdiff1d(np.arange(residuals.shape[1]), chunk)
    if outside.size < 2:
        return math.nan, math.nan
    corr = np.corrcoef(residuals[:, outside], rowvar=False)
    off = corr[~np.eye(outside.size, dtype=bool)]
    return float(np.abs(off).mean()), float(np.sqrt(np.mean(off**2)))


def paper_residual_correlation(residuals: np.ndarray) -> float:
    """The paper's ``mean_corr``: |cov_ij| / (sqrt(cov_ii cov_jj) + 1e-8) of the residuals of all W neurons (the
    chunk's own included; np.cov, N - 1), averaged over the lower triangle."""
    cov = np.cov(residuals, rowvar=False)
    scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov))) + 1e-8
    return float(np.mean(np.abs(cov / scale)[np.tril_indices(len(cov), k=-1)]))


def collapse(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-(C-1) variance share, participation ratio and NC1 = tr(Sigma_W Sigma_B^+) / C (Papyan et al. 2020) of
    one split, C the classes present, from the covariance's eigenvalues and the class scatters."""
    present = np.unique(labels)
    c = len(present)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    mu = x.mean(0)
    means = {k: x[labels == k].mean(0) for k in present}
    within = sum((x[labels == k] - means[k]).T @ (x[labels == k] - means[k]) for k in present) / len(x)
    between = sum(np.outer(means[k] - mu, means[k] - mu) for k in present) / c
    return {"top_share": float(eigenvalues[: c - 1].sum() / eigenvalues.sum()),
            "participation_ratio": float(eigenvalues.sum() ** 2 / (eigenvalues**2).sum()),
            "nc1": float(np.trace(within @ np.linalg.pinv(between, hermitian=True)) / c), "classes": c}


def residual_shape(residuals: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Mean |skewness|, mean |excess kurtosis| (scipy, biased moments) and mean |off-diagonal correlation| of r^2."""
    r = residuals[:, targets]
    sq_corr = np.corrcoef(r**2, rowvar=False)
    return {"abs_skew": float(np.abs(scipy.stats.skew(r, axis=0)).mean()),
            "abs_excess_kurtosis": float(np.abs(scipy.stats.kurtosis(r, axis=0, fisher=True)).mean()),
            "abs_sq_corr": float(np.abs(sq_corr[~np.eye(len(targets), dtype=bool)]).mean())}


def information_imbalance(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Delta(A -> B) = 2 / (N k) * mean over i of the summed B-ranks of i's k nearest neighbours in A, by brute force."""
    n = len(a)

    def distances(x: np.ndarray) -> np.ndarray:
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        return d

    da, db = distances(a), distances(b)
    total = 0
    for i in range(n):
        neighbours = np.lexsort((np.arange(n), da[i]))[:k]  # by distance, then by index
        total += sum(1 + int((db[i] < db[i, j]).sum()) for j in neighbours)
    return 2.0 * total / (n * n * k)


def crossing(sizes: list[int], curve: np.ndarray, threshold: float) -> float:
    """Where the curve first reaches the threshold, linear in log2(size) between grid sizes; the top size if never."""
    for k, value in enumerate(curve):
        if value >= threshold:
            if k == 0:
                return float(sizes[0])
            frac = (threshold - curve[k - 1]) / (curve[k] - curve[k - 1])
            return float(2 ** (math.log2(sizes[k - 1]) + frac * (math.log2(sizes[k]) - math.log2(sizes[k - 1]))))
    return float(max(sizes))


def first_size_at_or_above(sizes: list[int], value: float) -> int:
    """The grid size of a whole clone: the smallest chunk size >= the clone size (to rounding of the crossing)."""
    return min(s for s in sizes if s >= value * (1 - 1e-12))


def regime_word(net: dict[str, Any], family: list[dict[str, Any]]) -> str:
    """The rule of docs/regime.md: collapsed (top-(C-1) share >= 0.999 and w_c* <= 2 (C-1)); noisy-clones (at least
    two clones, 1 - R^2 at the clone size >= 1e-5, w_c* within a factor 2 across the family's widths holding at
    least two clones); no-clones otherwise. `net` and each of `family` hold width, clone, residual, top_share, classes."""
    if net["top_share"] >= 0.999 and net["clone"] <= 2 * max(net["classes"] - 1, 1) * (1 + 1e-12):
        return "collapsed"
    if net["width"] / net["clone"] < 2 or net["residual"] < 1e-5:
        return "no-clones"
    holding = [other["clone"] for other in family if other["width"] / other["clone"] >= 2]
    return "no-clones" if max(holding) / min(holding) > 2 else "noisy-clones"


def stats(values: list[float]) -> dict[str, float]:
    v = np.array(values, dtype=float)
    std = float(np.std(v, ddof=1)) if len(v) > 1 else math.nan
    return {"mean": float(v.mean()), "std": std, "sem": std / math.sqrt(len(v)), "n": len(v)}


@dataclass
class Reference:
    """Every value a network's rows should hold: (split, metric, chunk size, repeat) -> value."""

    values: dict[tuple[str, str, int, int], float]
    width: int
    sizes: list[int]
    collapse: dict[str, dict[str, float]]  # split -> top_share, participation_ratio, nc1, classes


def default_sizes(width: int) -> list[int]:
    return [2**i for i in range(width.bit_length()) if 2**i < width] + [width]


def reference(acts: Any, options: dict[str, Any], diagnostics: tuple[int, int], *, fit_split: str = "train",
              shift: int = 0, permute_head: bool = False, sizes: list[int] | None = None) -> Reference:
    """The reference rows of one network. `fit_split`, `shift` and `permute_head` plant the bugs the tests must see."""
    width, classes = acts.header.width, acts.header.num_classes
    weight, bias = (np.asarray(a, np.float64) for a in acts.head())
    if permute_head:
        weight = weight[:, ::-1]
    data = {s: (acts.features(s).astype(np.float64), np.asarray(acts.labels(s))) for s in ("train", "test")}
    x_test = data["test"][0]
    repeats, acc_repeats, seed = options["repeats"], options["acc_repeats"], options["seed"]
    sizes = sizes or default_sizes(width)
    values: dict[tuple[str, str, int, int], float] = {}
    n_test = len(x_test)
    ii_rows = np.sort(np.random.default_rng([seed, n_test]).choice(n_test, min(options["ii_points"], n_test), replace=False))
    diag_repeats, diag_targets = diagnostics
    for s in sizes:
        draws = (draw_chunks(width, s, max(repeats, acc_repeats), seed) + shift) % width
        for r, chunk in enumerate(draws[:acc_repeats]):
            for split in ("train", "test"):
                for suffix, scale in (("", 1.0), ("_rescaled", width / s)):
                    acc = chunk_accuracy(*data[split], weight, bias, chunk, scale)
                    values[(split, f"chunk_accuracy{suffix}", s, r)] = acc
                    values[(split, f"chunk_error{suffix}", s, r)] = 1.0 - acc
            acc = probe_accuracy(data[fit_split], data["test"], chunk, classes)
            values[("train->test", "probe_accuracy", s, r)] = acc
            values[("train->test", "probe_error", s, r)] = 1.0 - acc
        for r, chunk in enumerate(draws[:repeats]):
            r2, residuals = reconstruction(x_test, x_test, chunk)
            values[("test", "reconstruction_r2", s, r)] = r2
            values[("train->test", "reconstruction_r2", s, r)] = reconstruction(data[fit_split][0], x_test, chunk)[0]
            values[("test", "residual_abs_corr_paper", s, r)] = paper_residual_correlation(residuals)
            abs_corr, frob_corr = residual_correlations(residuals, chunk)
            if not math.isnan(abs_corr):  # no two neurons outside the chunk: no row
                values[("test", "residual_abs_corr", s, r)] = abs_corr
                values[("test", "residual_frob_corr", s, r)] = frob_corr
            if r < diag_repeats and s < width - 1:
                outside = np.setdiff1d(np.arange(width), chunk)
                assert outside.size <= diag_targets  # every neuron outside the chunk is a target at these widths
                for name, value in residual_shape(residuals, outside).items():
                    values[("test", f"residual_{name}", s, r)] = value
            x_ii = x_test[ii_rows]
            values[("test", "ii_chunk_to_full", s, r)] = information_imbalance(x_ii[:, chunk], x_ii, options["ii_k"])
            values[("test", "ii_full_to_chunk", s, r)] = information_imbalance(x_ii, x_ii[:, chunk], options["ii_k"])
    return Reference(values, width, sizes, {split: collapse(*data[split]) for split in ("train", "test")})


def hinge_fit(widths: np.ndarray, counts: np.ndarray, steps: int = 200_001) -> tuple[float, float]:
    """Least-squares n = max(1, 1 + slope (W - W_c)), slope >= 0, by a fine scan of W_c in [0, max W)."""
    candidates = np.linspace(0.0, widths.max(), steps)[:-1]
    above = np.clip(widths[None, :] - candidates[:, None], 0.0, None)
    slopes = np.clip((above * (counts - 1)).sum(1) / (above**2).sum(1), 0.0, None)
    sse = ((counts - 1 - slopes[:, None] * above) ** 2).sum(1)
    best = int(np.argmin(sse))
    return float(candidates[best]), float(slopes[best])


# ----------------------------------------------------------------------------------------------------------------------
# running the stage


def measure(how: str, networks: list[Any], options: dict[str, Any], folder: Path) -> tuple[list[dict], list[dict], list[str]]:
    """The two tables' rows and the networks' source names, from the Python API or from the command line."""
    if how == "api":
        tables = mitosis.measure_clones(networks, mitosis.CloneSettings(**options, device="cpu"))
        return tables.clones.to_pylist(), tables.summary.to_pylist(), [n.name for n in networks]
    paths = [mitosis.save_activations(n, folder / f"{n.name}.h5") for n in networks]
    flags = {"repeats": "--repeats", "acc_repeats": "--acc-repeats", "seed": "--seed", "r2_threshold": "--r2-threshold",
             "ii_points": "--ii-points", "ii_k": "--ii-k", "error_inf": "--error-inf", "sizes": "--sizes"}
    argv = ["clones", *map(str, paths), "-o", str(folder / "out"), "--device", "cpu", "-q"]
    for key, value in options.items():
        if key == "rescale":
            argv += ["--rescale"] if value else []
        elif value is not None:
            argv += [flags[key], ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    assert main(argv) == 0
    return (read_clones(folder / "out" / "clones.parquet")[0].to_pylist(),
            read_clones_summary(folder / "out" / "clones-summary.parquet")[0].to_pylist(), [str(p) for p in paths])


@pytest.fixture(scope="module")
def networks() -> list[Any]:
    return [planted(width, seed) for width, seed in NETWORKS]


@pytest.fixture(scope="module")
def references(networks: list[Any]) -> list[Reference]:
    diagnostics = tuple(mitosis.CloneSettings().options()["diagnostics"])
    return [reference(acts, OPTIONS, diagnostics) for acts in networks]


@pytest.fixture(params=["api", "cli"])
def measured(request: pytest.FixtureRequest, networks: list[Any], tmp_path: Path):
    """Measured afresh for each test (~0.2 s): mutation testing (mutmut) runs, for a mutant, only the tests during which
    the mutated function ran, so a measurement shared by the module would be credited to its first test alone."""
    return measure(request.param, networks, OPTIONS, tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# the tests


def tolerance(metric: str) -> float:
    if metric.startswith(("chunk_", "probe_", "ii_")):
        return 1e-12
    if metric == "residual_abs_corr_paper":
        return 1e-8  # the chunk's own O(alpha) residuals enter through its 1e-8 regulariser: agree to ~3e-10 here
    return 1e-6  # ridge solved from moments against scikit-learn on the data (alpha = 1e-8)


COLLAPSE_METRICS = ("top_share", "participation_ratio", "nc1")


def test_networks_are_listed_by_data_set_arch_width_and_seed(measured, networks) -> None:
    """Given wide first, the tables list the networks by what they are (here: narrow first), the summary's fits last."""
    rows, summary, sources = measured
    identity = {src: (a.header.dataset, a.header.arch, a.header.width, a.header.seed)
                for a, src in zip(networks, sources, strict=True)}
    want = sorted(sources, key=identity.__getitem__)
    assert want != sources
    assert list(dict.fromkeys(r["source"] for r in rows)) == want
    assert list(dict.fromkeys(r["source"] for r in summary)) == [*want, "all"]


def test_every_row_of_the_clones_table_matches_the_reference(measured, networks, references) -> None:
    rows, _, sources = measured
    for acts, source, ref in zip(networks, sources, references, strict=True):
        mine = [r for r in rows if r["source"] == source]
        got = {(r["split"], r["metric"], r["chunk_size"], r["repeat"]): r for r in mine}
        assert len(got) == len(mine), "one row per (split, metric, chunk size, repeat)"
        assert set(got) == set(ref.values), sorted(set(got) ^ set(ref.values))[:10]
        for key, want in ref.values.items():
            row = got[key]
            assert row["value"] == pytest.approx(want, abs=tolerance(key[1])), key
            ii = key[1].startswith("ii_")
            assert (row["n_points"], row["k"]) == ((OPTIONS["ii_points"], OPTIONS["ii_k"]) if ii else (None, None)), key
            assert (row["arch"], row["dataset"], row["width"], row["seed"], row["epoch"]) == (
                "planted", "toy", acts.header.width, acts.header.seed, 3)


def test_every_row_of_the_summary_matches_the_reference(measured, references) -> None:
    _, summary, sources = measured
    counts = []
    regimes: list[dict[str, Any]] = []
    expected: dict[str, dict[str, Any]] = {}  # source -> the facts `networks_from_summary` reads back
    straddled = []  # a grid size between each end of the interval and the estimate: the excess-error fit sees which is used
    end_gaps = []  # ... and so does 1 - R^2 at the clone size
    for source, ref in zip(sources, references, strict=True):
        width = ref.width
        rows = [r for r in summary if r["source"] == source]
        per_size = {(r["split"], r["metric"], r["chunk_size"]): r for r in rows
                    if r["chunk_size"] is not None and r["metric"] != "residual_at_clone_size"}
        grouped: dict[tuple[str, str, int], list[float]] = {}
        for (split, metric, size, _), value in ref.values.items():
            grouped.setdefault((split, metric, size), []).append(value)
        excess = {("test", "chunk_excess_error", s) for s in ref.sizes}
        assert set(per_size) == set(grouped) | excess
        for key, values in grouped.items():
            want = stats(values)
            row = per_size[key]
            assert row["n"] == want["n"], key
            for name in ("mean", "std", "sem"):
                assert row[name] == pytest.approx(want[name], abs=max(tolerance(key[1]), 1e-9)), (key, name)
            assert row["lo"] is None and row["hi"] is None and row["rule"] is None and row["status"] is None

        # the clone size and its interval: the R^2 crossings of mean, mean + sem and mean - sem, by hand
        r2 = [stats(grouped[("test", "reconstruction_r2", s)]) for s in ref.sizes]
        mean = np.array([st["mean"] for st in r2])
        sem = np.array([st["sem"] for st in r2])
        threshold = OPTIONS["r2_threshold"]
        value, lo, hi = crossing(ref.sizes, mean, threshold), crossing(ref.sizes, mean + sem, threshold), \
            crossing(ref.sizes, mean - sem, threshold)
        assert lo < value < hi, "the planted networks cross the threshold between grid sizes, with a real interval"
        straddled.append((any(lo <= s < value for s in ref.sizes), any(value <= s < hi for s in ref.sizes)))
        whole = first_size_at_or_above(ref.sizes, value)
        residual_at = {size: 1.0 - stats(grouped[("test", "reconstruction_r2", size)])["mean"] for size in ref.sizes}
        end_gaps.append(max(abs(residual_at[first_size_at_or_above(ref.sizes, end)] - residual_at[whole]) for end in (lo, hi)))
        facts = {(r["split"], r["metric"]): r for r in rows if r["chunk_size"] is None}
        assert len(facts) == len([r for r in rows if r["chunk_size"] is None]), "one row per (split, metric)"
        assert set(facts) == {("test", "clone_size"), ("test", "n_clones"), ("test", "error_inf"), ("test", "excess_error_c"),
                              ("test", "regime"), *((split, m) for split in ("train", "test") for m in COLLAPSE_METRICS)}
        size_row = facts[("test", "clone_size")]
        assert (size_row["split"], size_row["n"], size_row["status"]) == ("test", OPTIONS["repeats"], "ok")
        assert [size_row["mean"], size_row["lo"], size_row["hi"]] == pytest.approx([value, lo, hi], rel=1e-6)
        assert str(threshold) in size_row["rule"]
        count = facts[("test", "n_clones")]
        assert [count["mean"], count["lo"], count["hi"]] == pytest.approx([width / value, width / hi, width / lo], rel=1e-6)
        assert count["status"] == "ok" and count["rule"].startswith("W / clone_size")
        counts.append(width / value)

        # 1 - R^2 of the first grid size at or above the clone size (the estimate, not an end of its interval)
        (residual,) = [r for r in rows if r["metric"] == "residual_at_clone_size"]
        assert (residual["split"], residual["chunk_size"], residual["n"], residual["status"]) == (
            "test", whole, OPTIONS["repeats"], "ok")
        assert residual["mean"] == pytest.approx(residual_at[whole], abs=1e-6)

        # the collapse diagnostics of each split, from its own features and labels
        for split in ("train", "test"):
            want = ref.collapse[split]
            for metric in COLLAPSE_METRICS:
                row = facts[(split, metric)]
                assert row["mean"] == pytest.approx(want[metric], rel=1e-9), (split, metric)
                assert (row["n"], row["status"]) == (want["classes"], "ok"), (split, metric)
                assert f"C = {want['classes']}" in row["rule"]
        regimes.append({"source": source, "width": width, "clone": value, "classes": ref.collapse["test"]["classes"],
                        "residual": residual_at[whole], "top_share": ref.collapse["test"]["top_share"],
                        "row": facts[("test", "regime")]})

        # the excess error: chunk test error - error_inf, and its c w^-1/2 constant over the sizes >= clone size
        error_inf = OPTIONS["error_inf"]
        assert facts[("test", "error_inf")]["mean"] == error_inf
        assert facts[("test", "error_inf")]["status"] == "given (--error-inf)"
        errors = {s: stats(grouped[("test", "chunk_error", s)]) for s in ref.sizes}
        for s in ref.sizes:
            row = per_size[("test", "chunk_excess_error", s)]
            assert row["mean"] == pytest.approx(errors[s]["mean"] - error_inf, abs=1e-12)
            assert (row["std"], row["sem"], row["n"]) == pytest.approx((errors[s]["std"], errors[s]["sem"], errors[s]["n"]))
        used = [s for s in ref.sizes if s >= value]
        c = sum((errors[s]["mean"] - error_inf) / math.sqrt(s) for s in used) / sum(1 / s for s in used)
        assert facts[("test", "excess_error_c")]["mean"] == pytest.approx(c, rel=1e-9)
        assert facts[("test", "excess_error_c")]["n"] == len(used) and facts[("test", "excess_error_c")]["status"] == "ok"
        assert "c * w_c^-1/2 over sizes >= clone_size" in facts[("test", "excess_error_c")]["rule"]
        expected[source] = {"source": source, "width": width, "arch": "planted", "dataset": "toy", "epoch": 3,
                            "clone_size": value, "clone_size_lo": lo, "clone_size_hi": hi, "n_clones": width / value,
                            "clone_size_status": "ok", "r2": {s: st["mean"] for s, st in zip(ref.sizes, r2, strict=True)},
                            "excess_error_c": c, "excess_error_status": "ok", "residual_at_clone_size": residual_at[whole],
                            "collapse": {split: {m: ref.collapse[split][m] for m in COLLAPSE_METRICS}
                                         for split in ("train", "test")},
                            "skipped_metrics": []}

    assert any(below for below, _ in straddled) and any(above for _, above in straddled)
    assert max(end_gaps) > 1e-3, "an end of the interval in place of the estimate moves 1 - R^2 at the clone size"

    # the regime word of each network, by the stated rule over the family (both networks: planted on toy)
    for net in regimes:
        row = net["row"]
        assert (row["status"], row["mean"], row["n"]) == (regime_word(net, regimes), None, 1), net["source"]
        assert "0.999" in row["rule"] and "1e-05" in row["rule"]
    assert {net["row"]["status"] for net in regimes} == {"noisy-clones", "no-clones"}

    # across the networks: the hinge fit of n_clones against W, undetermined with two widths above W_c
    across = {r["metric"]: r for r in summary if r["source"] == "all"}
    assert set(across) == {"critical_width", "clones_per_width_slope"}
    widths = np.array([ref.width for ref in references], dtype=float)
    critical, slope = hinge_fit(widths, np.array(counts))
    assert across["critical_width"]["mean"] == pytest.approx(critical, abs=widths.max() / 4096)
    assert across["clones_per_width_slope"]["mean"] == pytest.approx(slope, rel=2e-3)
    assert all(r["n"] == len(references) and r["width"] is None for r in across.values())
    assert all((r["arch"], r["dataset"]) == ("planted", "toy") for r in across.values())
    assert all("n_clones = max(1, 1 + slope (W - critical_width))" in r["rule"] for r in across.values())

    # the per-network facts and the growth fit read back from the summary (what `mitosis clones` prints and --json gives)
    nets, growth = networks_from_summary(pa.Table.from_pylist(summary, schema=SUMMARY_SCHEMA))
    assert growth == {"critical_width": across["critical_width"]["mean"],
                      "clones_per_width_slope": across["clones_per_width_slope"]["mean"],
                      "growth_status": across["critical_width"]["status"]}
    assert [net.width for net in nets] == sorted(ref.width for ref in references)  # narrow first
    for net, ref in zip(nets, sorted(references, key=lambda r: r.width), strict=True):
        want = expected[net.source]
        seed = dict(NETWORKS)[net.width]
        assert net.label == f"planted w{net.width} s{seed} e3" and net.seed == seed
        assert net.regime == regime_word(next(n for n in regimes if n["source"] == net.source), regimes)
        for key, value in want.items():
            got = getattr(net, key)
            if key == "r2":
                assert set(got) == set(value) and [got[s] for s in ref.sizes] == pytest.approx(
                    [value[s] for s in ref.sizes], abs=1e-6)
            elif key == "collapse":
                assert set(got) == set(value)
                for split in value:
                    assert got[split] == pytest.approx(value[split], rel=1e-9), split
            elif isinstance(value, float):
                assert got == pytest.approx(value, rel=1e-6, abs=1e-6), key
            else:
                assert got == value, key
    above = int((widths > critical).sum())
    assert above == 2 and all(r["status"].startswith("undetermined") and f"({above})" in r["status"] for r in across.values())


def test_the_references_see_the_bugs(networks, references) -> None:
    """Each planted bug moves the reference far beyond the tolerances above (else the tests could not catch it)."""
    diagnostics = tuple(mitosis.CloneSettings().options()["diagnostics"])
    acts, ref = networks[0], references[0]
    bugs = {"fit on test": reference(acts, OPTIONS, diagnostics, fit_split="test"),
            "chunk shifted by one": reference(acts, OPTIONS, diagnostics, shift=1),
            "head permuted": reference(acts, OPTIONS, diagnostics, permute_head=True)}

    def gap(bug: Reference, split: str, metric: str) -> float:
        keys = [k for k in ref.values if k[:2] == (split, metric) and k[2] < ref.width]
        return max(abs(bug.values[k] - ref.values[k]) for k in keys)

    assert gap(bugs["fit on test"], "train->test", "probe_accuracy") > 0.05
    assert gap(bugs["fit on test"], "train->test", "reconstruction_r2") > 0.01
    for metric in ("chunk_accuracy", "reconstruction_r2", "residual_abs_corr", "residual_abs_corr_paper", "ii_chunk_to_full"):
        split = "train" if metric == "chunk_accuracy" else "test"
        assert gap(bugs["chunk shifted by one"], split, metric) > 0.01, metric
    assert gap(bugs["head permuted"], "test", "chunk_accuracy") > 0.05
    # measuring on the other split: the train and test rows differ
    train_acc = [ref.values[("train", "chunk_accuracy", s, r)] for s in ref.sizes for r in range(6)]
    test_acc = [ref.values[("test", "chunk_accuracy", s, r)] for s in ref.sizes for r in range(6)]
    assert max(abs(a - b) for a, b in zip(train_acc, test_acc, strict=True)) > 0.05
    # the collapse diagnostics of the other split, or of the chunk's neurons only
    for metric in COLLAPSE_METRICS:
        assert abs(ref.collapse["train"][metric] / ref.collapse["test"][metric] - 1) > 0.01, metric
    # the paper's correlation without its 1e-8, or without the chunk's own neurons: far beyond its tolerance
    x = acts.features("test").astype(np.float64)
    chunk = draw_chunks(ref.width, 4, 1, OPTIONS["seed"])[0]
    residuals = reconstruction(x, x, chunk)[1]
    outside = np.setdiff1d(np.arange(ref.width), chunk)
    unregularised = np.mean(np.abs(np.corrcoef(residuals, rowvar=False))[np.tril_indices(ref.width, k=-1)])
    right = paper_residual_correlation(residuals)
    assert abs(unregularised - right) > 1e4 * tolerance("residual_abs_corr_paper")
    assert abs(paper_residual_correlation(residuals[:, outside]) - right) > 0.01


def rank_deficient(width: int, latent: int = 4, n: int = 200) -> Any:
    """W neurons that are generic mixtures of a `latent`-dimensional signal plus 1e-3 noise: any chunk of `latent`
    neurons reconstructs the layer (R^2 ~ 1) and so the clone size is `latent` at every width."""
    rng = np.random.default_rng(width)
    mixing = rng.standard_normal((latent, width))
    head = rng.standard_normal((3, width))

    def split() -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, latent)) @ mixing + 1e-3 * rng.standard_normal((n, width))
        return x, (x @ head.T).argmax(1)

    return mitosis.Activations.from_arrays(head, np.zeros(3), train=split(), test=split(), arch="rank4", dataset="toy",
                                           seed=0, name=f"rank4-w{width}")


@pytest.mark.parametrize("how", ["api", "cli"])
def test_growth_fit_recovers_a_planted_hinge(how: str, tmp_path: Path) -> None:
    """Clone size 4 at W = 4, 8, 16, 32: n_clones = W / 4 = 1, 2, 4, 8, the hinge with W_c = 4 and slope 1/4."""
    options = {"repeats": 3, "acc_repeats": 2, "ii_points": 0, "sizes": (4,), "rescale": False, "error_inf": None}
    rows, summary, sources = measure(how, [rank_deficient(w) for w in (4, 8, 16, 32)], options, tmp_path)
    for source, width in zip(sources, (4, 8, 16, 32), strict=True):
        facts = {r["metric"]: r for r in summary if r["source"] == source and r["chunk_size"] is None}
        # the clone size is the grid size 4 itself: 1 - R^2 is that of size 4
        r2 = [r["value"] for r in rows if (r["source"], r["split"], r["metric"]) == (source, "test", "reconstruction_r2")]
        assert [(r["chunk_size"], r["mean"]) for r in summary if r["source"] == source and
                r["metric"] == "residual_at_clone_size"] == [(4, pytest.approx(1 - np.mean(r2), abs=1e-12))]
        assert [facts["clone_size"][k] for k in ("mean", "lo", "hi")] == pytest.approx([4.0, 4.0, 4.0], abs=1e-12)
        assert [facts["n_clones"][k] for k in ("mean", "lo", "hi")] == pytest.approx([width / 4] * 3, abs=1e-12)
        # R^2 reaches the threshold at the only size: w_c* is at most 4, and the status says so
        assert facts["clone_size"]["status"].startswith("at most the smallest size")
        assert facts["n_clones"]["status"] == facts["clone_size"]["status"]
    across = {r["metric"]: r for r in summary if r["source"] == "all"}
    assert across["critical_width"]["mean"] == pytest.approx(4.0, abs=1e-9)
    assert across["clones_per_width_slope"]["mean"] == pytest.approx(0.25, abs=1e-9)
    assert [r["status"] for r in across.values()] == ["ok", "ok"]  # three widths (8, 16, 32) above W_c = 4


def simplex(width: int, classes: int = 4, noise: float = 1e-4, n: int = 150) -> Any:
    """A collapsed layer: each test row its class mean (C random points in W dimensions) plus `noise`; the train rows
    carry 0.3 of noise (not collapsed: the word must come from the main split); the head reads the means."""
    rng = np.random.default_rng(width + 100)
    means = rng.standard_normal((classes, width))

    def split(sigma: float) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, n)
        return means[labels] + sigma * rng.standard_normal((n, width)), labels

    return mitosis.Activations.from_arrays(means, np.zeros(classes), train=split(0.3), test=split(noise), arch="simplex",
                                           dataset="toy", seed=0, epoch=1, name=f"simplex-w{width}")


@pytest.mark.parametrize("how", ["api", "cli"])
def test_regime_words_follow_the_rule_on_each_kind_of_layer(how: str, tmp_path: Path) -> None:
    """A collapsed simplex, and a planted family whose clone size triples from W = 32 to W = 64: the rule (recomputed
    here from the R^2 curve and the eigenvalues) names the first `collapsed`, and both of the family `no-clones` although
    each on its own holds two clones or more above rounding (w_c* is not constant across the widths)."""
    options = {"repeats": 4, "acc_repeats": 1, "seed": 5, "rescale": False, "r2_threshold": 0.92, "ii_points": 0,
               "error_inf": None}
    networks = [planted(64, 4, latent=10), simplex(16), planted(32, 1)]
    _, summary, sources = measure(how, networks, options, tmp_path)
    facts = []
    for acts, source in zip(networks, sources, strict=True):
        width, x = acts.header.width, acts.features("test").astype(np.float64)
        sizes = default_sizes(width)
        mean_r2 = {s: np.mean([reconstruction(x, x, chunk)[0] for chunk in draw_chunks(width, s, options["repeats"], 5)])
                   for s in sizes}
        clone = crossing(sizes, np.array([mean_r2[s] for s in sizes]), options["r2_threshold"])
        diagnostics = collapse(x, np.asarray(acts.labels("test")))
        residual = 1.0 - mean_r2[first_size_at_or_above(sizes, clone)]
        got = {r["metric"]: r for r in summary if r["source"] == source and r["split"] == "test" and r["chunk_size"] is None}
        assert got["clone_size"]["mean"] == pytest.approx(clone, rel=1e-6)
        assert got["top_share"]["mean"] == pytest.approx(diagnostics["top_share"], rel=1e-9)
        if acts.header.arch == "simplex":  # collapsed on the main split only
            train = collapse(acts.features("train").astype(np.float64), np.asarray(acts.labels("train")))
            assert diagnostics["top_share"] >= 0.999 > train["top_share"]
        assert [r["mean"] for r in summary if r["source"] == source and r["metric"] == "residual_at_clone_size"] == \
            pytest.approx([residual], abs=1e-6)
        facts.append({"arch": acts.header.arch, "width": width, "clone": clone, "residual": residual,
                      "top_share": diagnostics["top_share"], "classes": diagnostics["classes"], "word": got["regime"]["status"]})
    for net in facts:
        family = [other for other in facts if other["arch"] == net["arch"]]
        assert net["word"] == regime_word(net, family), net
    words = {(net["arch"], net["width"]): net["word"] for net in facts}
    assert words == {("planted", 64): "no-clones", ("simplex", 16): "collapsed", ("planted", 32): "no-clones"}
    planted_nets = [net for net in facts if net["arch"] == "planted"]
    assert all(net["width"] / net["clone"] >= 2 and net["residual"] >= 1e-5 for net in planted_nets)  # the ratio decides
    assert regime_word(planted_nets[1], planted_nets[1:]) == "noisy-clones"  # alone, W = 32 has noisy clones


def duplicated(width: int, latent: int, n: int, seed: int, scale: float = 1e4) -> tuple[Any, dict[str, np.ndarray]]:
    """Exact copies of `latent` signals at a large scale: the chunks' Gram matrices are singular far below the
    ridge's alpha (the eigendecomposition branch of the solve); returns the activations and each split's signals."""
    rng = np.random.default_rng(seed)
    copy_of = np.arange(width) % latent
    signals = {s: scale * (rng.standard_normal((n, latent)) + (0.5 if s == "train" else 0.0)) for s in ("train", "test")}
    head = rng.standard_normal((3, width))
    splits = {s: (z[:, copy_of], (z[:, copy_of] @ head.T).argmax(1)) for s, z in signals.items()}
    return mitosis.Activations.from_arrays(head, np.zeros(3), train=splits["train"], test=splits["test"], arch="copies",
                                           dataset="toy", seed=seed, name="copies"), signals


@pytest.mark.parametrize("how", ["api", "cli"])
def test_reconstruction_of_exact_copies_at_a_large_scale(how: str, tmp_path: Path) -> None:
    """A chunk of copies spans exactly its distinct signals: the R^2 is that of the ridge on those signals
    (well conditioned, fitted here by scikit-learn), in and out of sample, however singular the chunk's Gram matrix."""
    width, latent = 16, 5
    acts, signals = duplicated(width, latent, n=90, seed=7)
    options = {"repeats": 5, "acc_repeats": 1, "ii_points": 0, "sizes": (2, 4, 8), "rescale": False, "error_inf": None}
    rows, _, _ = measure(how, [acts], options, tmp_path)
    copy_of = np.arange(width) % latent
    z = {s: v.astype(np.float32).astype(np.float64) for s, v in signals.items()}
    x = {s: v[:, copy_of] for s, v in z.items()}
    checked = 0
    for size in options["sizes"]:
        for r, chunk in enumerate(draw_chunks(width, size, options["repeats"], 0)):
            covered = np.unique(copy_of[chunk])
            for split, fit in (("test", "test"), ("train->test", "train")):
                model = Ridge(alpha=ALPHA).fit(z[fit][:, covered], x[fit])
                want = r2_score(x["test"], model.predict(z["test"][:, covered]), multioutput="variance_weighted")
                got = [row["value"] for row in rows if (row["split"], row["metric"], row["chunk_size"], row["repeat"]) == (
                    split, "reconstruction_r2", size, r)]
                assert got == pytest.approx([want], abs=1e-6), (split, size, r, covered)
                checked += 1
    assert checked == 2 * options["repeats"] * len(options["sizes"])


def test_a_split_streamed_in_many_blocks_gives_the_reference_rows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With BLOCK_BYTES lowered the splits stream in blocks of 64 rows (train: 3 blocks, test: 2), and the Information
    Imbalance subsample takes every test row, each block's first one among them: every row as the reference's. The
    chunk size W - 1 leaves one neuron outside the chunk, too few for the residuals' shape (no such rows)."""
    monkeypatch.setattr(clones_stage, "BLOCK_BYTES", 1)
    acts = planted(16, 3, n_train=150, n_test=130)
    sizes = [1, 4, 14, 15, 16]
    options = {**OPTIONS, "ii_points": 130, "sizes": tuple(sizes), "error_inf": None}
    ref = reference(acts, options, tuple(mitosis.CloneSettings().options()["diagnostics"]), sizes=sizes)
    assert ("test", "residual_abs_skew", 14, 0) in ref.values and ("test", "residual_abs_skew", 15, 0) not in ref.values
    rows, _, _ = measure("api", [acts], options, tmp_path)
    got = {(r["split"], r["metric"], r["chunk_size"], r["repeat"]): r["value"] for r in rows}
    assert len(got) == len(rows) and set(got) == set(ref.values), sorted(set(got) ^ set(ref.values))[:10]
    for key, want in ref.values.items():
        assert got[key] == pytest.approx(want, abs=tolerance(key[1])), key


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_network_with_one_split_is_measured_on_that_split(split: str, tmp_path: Path) -> None:
    """A file with one split: every row on it (R^2 fitted and scored there), no probe and no train->test rows; the
    restricted head by hand; without chunk test errors the excess-error constant is undetermined, and says why."""
    full = planted(16, 4)
    weight, bias = (np.asarray(a, np.float64) for a in full.head())
    x, y = full.features(split), np.asarray(full.labels(split))
    acts = mitosis.Activations.from_arrays(*full.head(), **{split: (x, y)}, arch="planted", dataset="toy", seed=4, epoch=3,
                                           name=f"only-{split}")
    options = {"repeats": 3, "acc_repeats": 3, "seed": 5, "rescale": False, "r2_threshold": 0.92, "ii_points": 0,
               "sizes": (2, 8), "error_inf": 0.05}
    rows, summary, _ = measure("api", [acts], options, tmp_path)
    x64 = x.astype(np.float64)
    want = {}
    for size in options["sizes"]:
        for r, chunk in enumerate(draw_chunks(16, size, 3, 5)):
            want[("chunk_accuracy", size, r)] = chunk_accuracy(x64, y, weight, bias, chunk)
            want[("reconstruction_r2", size, r)] = reconstruction(x64, x64, chunk)[0]
    assert {r["split"] for r in rows} == {split}
    assert not {r["metric"] for r in rows} & {"probe_accuracy", "probe_error"}
    for row in rows:
        key = (row["metric"], row["chunk_size"], row["repeat"])
        if key in want:
            assert row["value"] == pytest.approx(want.pop(key), abs=tolerance(row["metric"])), key
    assert not want, "every chunk accuracy and R^2 has its row"
    facts = {r["metric"]: r for r in summary if r["chunk_size"] is None}
    assert facts["clone_size"]["split"] == split
    excess = facts["excess_error_c"]
    assert (excess["split"], excess["n"] > 0, excess["mean"] is not None) == ("test", split == "test", split == "test")
    if split == "train":
        assert excess["status"] == "undetermined: no chunk test errors (no test split or no trained head)"
        assert excess["rule"].startswith("least squares of chunk_error - error_inf")
    else:
        assert excess["status"] == "ok"
