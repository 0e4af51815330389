"""`report` end to end on tables the stages really wrote: every number of the summary tables in summary.md
and index.html, and every plotted series of every figure, against values computed here from the tables
(read with pyarrow), through the Python API and the command line.

The inputs: `clones` on two planted networks (W = 32 and 16, with error_inf, so the excess error, its
constant and the growth fit are there), `ensemble` on a pool of two widths, and a tiny training run.
The figures are the very ones the report rendered (caught when the report closes them); their data
lines carry a `gid` naming what they show.
"""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pyarrow.parquet as pq
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Polygon

import mitosis_cli as mitosis
from mitosis_cli.cli.app import main
from tests.stages import test_clones_reference as planted_clones
from tests.stages import test_ensemble_reference as planted_ensemble
from tests.stages.test_train_reference import DATASET, train

ERROR_INF = 0.05
R2_THRESHOLD = 0.9


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """clones, clones-summary, ensemble and history tables written by the stages."""
    folder = tmp_path_factory.mktemp("report-inputs")
    acts = [mitosis.save_activations(planted_clones.planted(w, s), folder / f"planted-w{w}.h5") for w, s in ((32, 1), (16, 2))]
    mitosis.run_clones(mitosis.CloneSettings(inputs=tuple(acts), out=folder / "clones", repeats=3, acc_repeats=3, ii_points=40,
                                             r2_threshold=R2_THRESHOLD, error_inf=ERROR_INF, device="cpu"))
    members = [mitosis.save_activations(n, folder / f"{n.name}.h5") for n in planted_ensemble.members()]
    mitosis.run_ensemble(mitosis.EnsembleSettings(inputs=tuple(members), out=folder / "ensemble.parquet", repeats=3))
    train("api", folder / "run-w12")
    return {"clones": folder / "clones" / "clones.parquet", "summary": folder / "clones" / "clones-summary.parquet",
            "ensemble": folder / "ensemble.parquet", "history": folder / "run-w12" / "history.parquet"}


@pytest.fixture(scope="module", params=["api", "cli"])
def report(request: pytest.FixtureRequest, tables: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The report folder, the names of its figures and the rendered figures themselves."""
    out = tmp_path_factory.mktemp(f"report-{request.param}") / "report"
    rendered: list[Figure] = []
    close = plt.close

    def keep(figure: Any = None) -> None:  # the report closes each figure once it is saved: keep it for the test
        if isinstance(figure, Figure):
            rendered.append(figure)
        else:
            close(figure)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plt, "close", keep)
        if request.param == "api":
            result = mitosis.run_report(mitosis.ReportSettings(tables=tuple(tables.values()), out=out))
            names = [f["name"] for f in result.figures]
        else:
            assert main(["report", *map(str, tables.values()), "-o", str(out), "-q"]) == 0
            names = sorted(p.stem for p in (out / "figures").glob("*.png"))
            names = [n for n in _figure_order(out) if n in names]
    yield out, dict(zip(names, rendered, strict=True))
    for figure in rendered:
        close(figure)


def _figure_order(out: Path) -> list[str]:
    return re.findall(r'<figure id="([^"]+)"', (out / "index.html").read_text())


# ----------------------------------------------------------------------------------------------------------------------
# reading the report back


class _Tables(HTMLParser):
    """The <h3>-titled tables of an HTML page: title -> rows of cell texts (the header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._title = self._cell = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("h3", "th", "td"):
            self._text = ""
        if tag == "tr" and self._title is not None:
            self.tables[self._title].append([])

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3":
            self._title = self._text
            self.tables[self._title] = []
        elif tag in ("th", "td") and self._title is not None:
            self.tables[self._title][-1].append(self._text)
        elif tag == "table":
            self._title = None

    def handle_data(self, data: str) -> None:
        self._text += data


def html_tables(path: Path) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.tables


def markdown_tables(path: Path) -> dict[str, list[list[str]]]:
    """### Title, then | header |, |---|, | rows |."""
    tables: dict[str, list[list[str]]] = {}
    title = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line[4:] if line.startswith("### ") else None
        elif title is not None and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            tables.setdefault(title, []).append(cells)
        elif not line.strip() and title in tables:
            title = None
    return tables


NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?")


def numbers(cell: str) -> list[float]:
    return [float(x) for x in NUMBER.findall(cell)]


def shown(cell: str, value: float, digits: int) -> bool:
    """The cell shows `value` to `digits` significant digits."""
    got = numbers(cell)
    return len(got) == 1 and math.isclose(got[0], value, rel_tol=5.01 * 10.0**-digits, abs_tol=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# the values, from the tables


def rows_of(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def mean_sem(values: list[float]) -> tuple[float, float]:
    v = np.array(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def curve(rows: list[dict], x: str, y: str = "value") -> tuple[np.ndarray, np.ndarray]:
    """Mean of `y` at each distinct `x`, x ascending."""
    xs = sorted({r[x] for r in rows})
    return np.array(xs, float), np.array([mean_sem([r[y] for r in rows if r[x] == v])[0] for v in xs])


def where(rows: list[dict], **match: Any) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


# ----------------------------------------------------------------------------------------------------------------------
# the tests


def test_summary_tables_show_the_tables_numbers(report, tables) -> None:
    out, _ = report
    html, markdown = html_tables(out / "index.html"), markdown_tables(out / "summary.md")
    assert html == markdown, "index.html and summary.md show the same tables"
    clones, summary, ensemble, history = (rows_of(tables[k]) for k in ("clones", "summary", "ensemble", "history"))

    network = html["Clones per network"]
    assert network[0][:3] == ["arch", "dataset", "W"] and len(network) == 3
    for row, width in zip(network[1:], (16, 32), strict=True):  # networks sorted by width
        facts = {r["metric"]: r for r in where(summary, width=width) if r["chunk_size"] is None}
        assert row[:5] == ["planted", "toy", str(width), "1", "3"]
        size = facts["clone_size"]
        assert numbers(row[5]) == pytest.approx([size["mean"], size["lo"], size["hi"]], rel=5.01e-3)
        assert shown(row[6], facts["n_clones"]["mean"], 3)
        whole = mean_sem([r["value"] for r in where(clones, width=width, split="test", metric="chunk_error", chunk_size=width)])
        assert shown(row[7], whole[0], 4)
        assert shown(row[8], facts["error_inf"]["mean"], 4) and facts["error_inf"]["mean"] == ERROR_INF
        # 1 - R^2 of the first grid size at or above the clone size, from the raw rows; the test split's diagnostics
        r2 = where(clones, width=width, split="test", metric="reconstruction_r2")
        whole_clone = min(s for s in {r["chunk_size"] for r in r2} if s >= size["mean"])
        assert shown(row[9], 1 - mean_sem([r["value"] for r in where(r2, chunk_size=whole_clone)])[0], 2)
        for cell, metric, digits in ((row[10], "top_share", 5), (row[11], "participation_ratio", 3), (row[12], "nc1", 2)):
            (diagnostic,) = where(summary, width=width, split="test", metric=metric)
            assert shown(cell, diagnostic["mean"], digits), metric
        (regime,) = where(summary, width=width, metric="regime")
        assert row[13] == regime["status"] and row[13] in ("collapsed", "noisy-clones", "no-clones")

    # beside the paper's published numbers: R^2 at 16 / 32 / 64, w_c*, the paper's residual correlation, c, the regime
    paper = html["Comparison with the paper"]
    assert len(paper) == 4 and paper[1][0].startswith("paper: Doimo et al. 2022") and paper[1][1] == "0.54 / 0.87 / 0.99"
    for row, width in zip(paper[2:], (16, 32), strict=True):
        facts = {r["metric"]: r for r in where(summary, width=width, split="test") if r["chunk_size"] is None}
        test = where(clones, width=width, split="test")
        assert row[0] == f"this run: planted on toy, W = {width}"
        r2 = dict(zip(*curve(where(test, metric="reconstruction_r2"), "chunk_size"), strict=True))
        for cell, chunk in zip(row[1].split(" / "), (16, 32, 64), strict=True):
            assert shown(cell, r2[chunk], 4) if chunk in r2 else cell == "–", (width, chunk)
        assert shown(row[2], facts["clone_size"]["mean"], 3)
        sizes, corr = curve(where(test, metric="residual_abs_corr_paper"), "chunk_size")
        whole = [(c, s) for s, c in zip(sizes, corr, strict=True) if facts["clone_size"]["mean"] <= s < width]
        assert numbers(row[3]) == pytest.approx([corr[0], sizes[0], *(whole[0] if whole else ())], rel=5.01e-2)
        assert shown(row[4], facts["excess_error_c"]["mean"], 3) and row[5] == facts["regime"]["status"]

    growth = html["Mitosis across widths"]
    across = {r["metric"]: r["mean"] for r in summary if r["source"] == "all"}
    assert len(growth) == 2 and growth[1][:2] == ["planted", "toy"]
    assert shown(growth[1][2], across["critical_width"], 3)
    assert shown(growth[1][3], 1000 * across["clones_per_width_slope"], 3)
    assert growth[1][4] == next(r["status"] for r in summary if r["source"] == "all")

    shown_ensembles = html["Ensembles"]
    assert shown_ensembles[0] == ["kind", "W", "members", "test accuracy (± sem)"]
    expected = [(kind, width) for kind in ("ensemble", "wide") for width in (4, 8)]
    assert [(r[0], int(r[1])) for r in shown_ensembles[1:]] == expected
    for row, (kind, width) in zip(shown_ensembles[1:], expected, strict=True):
        accuracy = where(ensemble, kind=kind, width=width, split="test", metric="accuracy")
        most = max(r["members"] for r in accuracy)
        mean, sem = mean_sem([r["value"] for r in accuracy if r["members"] == most])
        assert int(row[2]) == most
        values = numbers(row[3])  # mean ± sem; a single draw has no sem
        assert len(values) == (2 if len([r for r in accuracy if r["members"] == most]) > 1 else 1), row
        assert math.isclose(values[0], mean, rel_tol=5.01e-4)
        assert len(values) == 1 or math.isclose(values[1], sem, rel_tol=5.01e-2)

    training = html["Training runs"]
    last = max(history, key=lambda r: r["epoch"])
    zero = [r["epoch"] for r in history if r["train_error"] == 0]
    assert len(training) == 2
    run = training[1]
    assert run[:6] == ["run-w12", "mlp", DATASET, "12", "3", str(last["epoch"])]
    assert shown(run[6], last["train_error"], 4) and shown(run[7], last["test_error"], 4)
    assert run[8] == (str(min(zero)) if zero else "never")


def _line(fig: Figure, gid: str) -> Any:
    found = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == gid]
    assert len(found) == 1, (gid, sorted(str(ln.get_gid()) for ax in fig.axes for ln in ax.get_lines()))
    return found[0]


def _xy(fig: Figure, gid: str) -> tuple[np.ndarray, np.ndarray]:
    line = _line(fig, gid)
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def _gids(fig: Figure) -> set[str]:
    return {ln.get_gid() for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}


def test_figures_plot_the_tables_values(report, tables) -> None:
    _, figures = report
    clones, summary, ensemble, history = (rows_of(tables[k]) for k in ("clones", "summary", "ensemble", "history"))
    assert list(figures) == ["clones-planted-toy-16", "clones-planted-toy-32", "across-widths-planted-toy",
                             "information-imbalance", "ensemble-accuracy", "training-curves"]
    for width in (16, 32):
        fig = figures[f"clones-planted-toy-{width}"]
        net = where(clones, width=width)
        facts = {r["metric"]: r for r in where(summary, width=width) if r["chunk_size"] is None}
        assert _gids(fig) == {"excess_error:test", "guide", "chunk_error:train", "reconstruction_r2:test",
                              "reconstruction_r2:train->test", "r2-threshold", "residual_abs_corr:test",
                              "residual_frob_corr:test", "residual_abs_corr_paper:test", "clone-size"}
        x, y = curve(where(net, split="test", metric="chunk_error"), "chunk_size")
        assert (y > ERROR_INF).all()
        np.testing.assert_allclose(_xy(fig, "excess_error:test"), (x, y - ERROR_INF), rtol=1e-12)
        for gid, split, metric in (("chunk_error:train", "train", "chunk_error"),
                                   ("reconstruction_r2:test", "test", "reconstruction_r2"),
                                   ("reconstruction_r2:train->test", "train->test", "reconstruction_r2"),
                                   ("residual_abs_corr:test", "test", "residual_abs_corr"),
                                   ("residual_frob_corr:test", "test", "residual_frob_corr"),
                                   ("residual_abs_corr_paper:test", "test", "residual_abs_corr_paper")):
            np.testing.assert_allclose(_xy(fig, gid), curve(where(net, split=split, metric=metric), "chunk_size"), rtol=1e-12,
                                       err_msg=gid)
        guide_x, guide_y = _xy(fig, "guide")
        np.testing.assert_allclose(guide_y * np.sqrt(guide_x), facts["excess_error_c"]["mean"], rtol=1e-9)
        assert guide_x.min() == pytest.approx(facts["clone_size"]["mean"]) and guide_x.max() == pytest.approx(width)
        markers = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == "clone-size"]
        assert len(markers) == 4 and all(np.allclose(ln.get_xdata(), facts["clone_size"]["mean"]) for ln in markers)
        bands = [p for ax in fig.axes for p in ax.patches if p.get_gid() == "clone-size-interval"]
        assert len(bands) == 4
        band = bands[0]
        corners = (np.asarray(band.get_xy())[:, 0] if isinstance(band, Polygon)
                   else [band.get_x(), band.get_x() + band.get_width()])
        assert (min(corners), max(corners)) == pytest.approx((facts["clone_size"]["lo"], facts["clone_size"]["hi"]))
        assert np.allclose(_xy(fig, "r2-threshold")[1], R2_THRESHOLD)

    # every width on shared axes: R^2, excess error with each width's c w^-1/2 from its clone size, the paper's residual
    # correlation (without the whole layer, whose residuals are O(alpha)), and the collapse diagnostics with the regime
    growth = figures["across-widths-planted-toy"]
    for width in (16, 32):
        net = where(clones, width=width, split="test")
        facts = {(r["split"], r["metric"]): r for r in where(summary, width=width) if r["chunk_size"] is None}
        np.testing.assert_allclose(_xy(growth, f"across-r2:{width}"), curve(where(net, metric="reconstruction_r2"), "chunk_size"),
                                   rtol=1e-12)
        x, y = curve(where(net, metric="chunk_error"), "chunk_size")
        np.testing.assert_allclose(_xy(growth, f"across-excess:{width}"), (x, y - ERROR_INF), rtol=1e-12)
        guide_x, guide_y = _xy(growth, f"across-guide:{width}")
        np.testing.assert_allclose(guide_y * np.sqrt(guide_x), facts[("test", "excess_error_c")]["mean"], rtol=1e-9)
        assert (guide_x.min(), guide_x.max()) == pytest.approx((facts[("test", "clone_size")]["mean"], width))
        x, y = curve(where(net, metric="residual_abs_corr_paper"), "chunk_size")
        np.testing.assert_allclose(_xy(growth, f"across-corr:{width}"), (x[x < width], y[x < width]), rtol=1e-12)
        word = facts[("test", "regime")]["status"]
        np.testing.assert_allclose(_xy(growth, f"top-share:{width}:{word}"),
                                   ([width], [1 - facts[("test", "top_share")]["mean"]]))
        np.testing.assert_allclose(_xy(growth, f"participation:{width}"),
                                   ([width], [facts[("test", "participation_ratio")]["mean"]]))
    assert np.allclose(_xy(growth, "c-minus-1")[1], max(r["n"] for r in where(summary, metric="top_share")) - 1)
    assert np.allclose(_xy(growth, "collapse-threshold")[1], 1 - 0.999)

    counts = sorted((r["width"], r["mean"]) for r in summary if r["metric"] == "n_clones")
    np.testing.assert_allclose(_xy(growth, "n_clones:planted:toy"), np.array(counts, float).T)
    across = {r["metric"]: r["mean"] for r in summary if r["source"] == "all"}
    critical, slope = across["critical_width"], across["clones_per_width_slope"]
    right = max(32, critical) * 1.05
    np.testing.assert_allclose(_xy(growth, "fit:planted:toy"), ([0, critical, right], [1, 1, 1 + slope * (right - critical)]))
    assert np.allclose(_xy(growth, "critical-width:planted:toy")[0], critical)

    imbalance = figures["information-imbalance"]
    for width in (16, 32):
        for metric in ("ii_chunk_to_full", "ii_full_to_chunk"):
            np.testing.assert_allclose(_xy(imbalance, f"{metric}:planted:toy:{width}"),
                                       curve(where(clones, width=width, metric=metric, split="test"), "chunk_size"))

    ens = figures["ensemble-accuracy"]
    test_accuracy = where(ensemble, split="test", metric="accuracy")
    for width in (4, 8):
        members, accuracy = curve(where(test_accuracy, kind="ensemble", width=width), "members")
        np.testing.assert_allclose(_xy(ens, f"ensemble:{width}"), (members, accuracy))
        np.testing.assert_allclose(_xy(ens, f"ensemble-total:{width}"), (members * width, accuracy))
    for chunk in (1, 2, 4):
        count, accuracy = curve(where(test_accuracy, kind="chunk-average", width=chunk), "members")
        np.testing.assert_allclose(_xy(ens, f"chunk-average:{chunk}"), (count, accuracy))
        np.testing.assert_allclose(_xy(ens, f"chunk-average-total:{chunk}"), (count * chunk, accuracy))
    widths, wide = curve(where(test_accuracy, kind="wide"), "width")
    np.testing.assert_allclose(_xy(ens, "wide"), (widths, wide))
    assert np.allclose(_xy(ens, "wide-reference:8")[1], wide[-1])
    error_inf = where(ensemble, kind="error-inf")[0]["value"]
    assert all(np.allclose(ln.get_ydata(), 1 - error_inf) for ax in ens.axes for ln in ax.get_lines()
               if ln.get_gid() == "accuracy-inf")
    for metric in ("loss", "bias", "variance"):
        np.testing.assert_allclose(_xy(ens, f"bias-variance:{metric}"),
                                   curve(where(ensemble, kind="bias-variance", split="test", metric=metric), "width"))

    curves = figures["training-curves"]
    epochs = np.array([r["epoch"] for r in history], float)
    for column in ("train_loss", "test_loss", "train_error", "test_error"):
        np.testing.assert_allclose(_xy(curves, f"{column}:mlp:{DATASET}:12:3"),
                                   (epochs, [r[column] for r in history]), err_msg=column)
