"""Assemble a report: decide which figures the tables support, render them, and write the report's files
(index.html, summary.md, figures/) into a folder. The report stage (stages/report.py) owns the output
transaction around it: the stamp, the lock and the staged folder swapped into place."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from mitosis_cli import __version__
from mitosis_cli.report import figures as F
from mitosis_cli.report.frame import Frame
from mitosis_cli.report.html import RenderedFigure, ReportDocument, render_html, render_markdown
from mitosis_cli.report.inputs import FIGURES_OF_KIND, ReportInputs
from mitosis_cli.report.select import (
    network_epochs,
    network_keys,
    network_label,
    select_network,
    source_estimate,
    source_status,
)
from mitosis_cli.report.summary import summary_tables

PNG_DPI = 200  # sharp on high-density screens and in print
# On screen a figure inch is shown as 140 CSS pixels (1.45x print size): a full-width (7 in) figure then
# fills the page's ~980 px text column and its 8 pt labels read like body text.
SCREEN_PX_PER_INCH = 140

SECTION_CLONES = "Clones per network"
SECTION_WIDTH = "Mitosis across widths"
SECTION_II = "Information Imbalance"
SECTION_ENSEMBLE = "Ensembles"
SECTION_TRAINING = "Training"

# What each section's figures show, said once above them instead of under every figure.
SECTION_INTROS = {
    SECTION_CLONES: (
        "One figure per network. (a) Chunk test error minus error∞ (the error of a large ensemble of full networks) "
        "against chunk size, log-log, with the c·w_c^-1/2 decay of an ensemble of independent members from the clone "
        "size on; (b) training error of the trained head restricted to the chunk; (c) R² of the ridge reconstruction "
        "of the whole layer from the chunk, fit and scored on test (the paper's) and fit on train, scored on test; "
        "(d) correlation of the reconstruction residuals: ours (the m neurons outside the chunk) and the paper's "
        "(all W neurons, the chunk's own included, a 1e-8 regulariser; about ours times m(m-1)/(W(W-1))). "
        "Dashed: the clone size w_c*, grey band its interval. Error bars: standard error over repeats."),
    SECTION_WIDTH: (
        "Every width of one architecture and data set on shared axes, as the paper draws them: (a) R², (b) excess "
        "test error with each width's fitted c·w_c^-1/2 (dashed), (c) the paper's residual correlation, (d) the "
        "number of clones W/w_c* with the growth line and the critical width; (e) the variance outside the top C-1 "
        "principal directions (a layer collapsed onto its class means has almost none) with each network's regime "
        "word, and (f) the participation ratio, the layer's effective dimension, beside C-1."),
}


def network_caption(summary: Frame | None) -> str:
    """A network's own numbers for its figure: clone size, number of clones, regime."""
    clone, n_clones = source_estimate(summary, "clone_size"), source_estimate(summary, "n_clones")
    parts = []
    if clone is not None:
        parts.append(f"w_c* = {clone.value:.3g}")
    if n_clones is not None:
        parts.append(f"{n_clones.value:.3g} clones")
    word = source_status(summary, "regime")
    if word:
        parts.append(f"regime: {word}")
    return "; ".join(parts) + "." if parts else "No clone size in the tables."


@dataclass(frozen=True)
class FigurePlan:
    name: str
    section: str
    title: str
    caption: str
    make: Callable[[], Figure]


def _slug(*parts: object) -> str:
    text = "-".join(str(p) for p in parts).lower()
    return "".join(ch if ch.isalnum() or ch in "._" else "-" for ch in text).strip("-")


def plan_figures(inputs: ReportInputs) -> tuple[list[FigurePlan], list[str]]:
    """The figures these tables support, and one note per kind of table that is missing."""
    notes = [f"no {kind} table: skipped {FIGURES_OF_KIND[kind]}" for kind in inputs.missing_kinds()]
    notes += [f"{path}: ignored (a {kind!r} table is not used by the report)" for path, kind in inputs.ignored]
    plans: list[FigurePlan] = []
    clones, summary, ensemble = inputs.clones, inputs.summary, inputs.ensemble
    keys = network_keys(clones, summary)
    for key in keys:
        rows, net_summary = select_network(clones, key), select_network(summary, key)
        has_chunks = any(f is not None and np.isfinite(f["chunk_size"]).any() for f in (rows, net_summary))
        if has_chunks:
            plans.append(FigurePlan(
                _slug("clones", *key), SECTION_CLONES, network_label(key), network_caption(net_summary),
                lambda key=key, rows=rows, net_summary=net_summary: F.network_panels(key, rows, net_summary, ensemble)))
    families = sorted({(arch, dataset) for arch, dataset, _ in keys})
    for arch, dataset in families:
        members = [k for k in keys if k[:2] == (arch, dataset)]
        plans.append(FigurePlan(
            _slug("across-widths", arch, dataset), SECTION_WIDTH, f"{arch} on {dataset}: every width",
            f"{len(members)} width(s): " + ", ".join(str(k[2]) for k in members) + ".",
            lambda members=members: F.across_widths(members, clones, summary, ensemble)))
    ii_metrics = ("ii_chunk_to_full", "ii_full_to_chunk")
    ii_keys = [k for k in keys if any(len(f.where(metric=m)) for f in (select_network(clones, k), select_network(summary, k))
                                      if f is not None for m in ii_metrics)]
    if ii_keys:
        plans.append(FigurePlan(
            "information-imbalance", SECTION_II, "Information Imbalance against chunk size",
            "Δ(chunk → full layer) near 0 means the chunk predicts the whole layer's neighbourhoods; Δ(full layer → chunk) "
            "near 0 that the layer predicts the chunk's. N: points, k: neighbour rank used. Dashed: clone size.",
            lambda: F.information_imbalance(clones, summary, ii_keys)))
    if ensemble is not None and len(ensemble.where(split="test")):
        plans.append(FigurePlan(
            "ensemble-accuracy", SECTION_ENSEMBLE, "Ensembles and wide networks",
            "Test accuracy of ensembles (logits summed) against the number of members and against their total width, "
            "beside single wide networks; error bars: standard error over random draws of members.",
            lambda: F.ensemble_accuracy(ensemble)))
    if inputs.histories:
        runs = [(run.network, run.seed, run.frame) for run in inputs.histories]
        plans.append(FigurePlan(
            "training-curves", SECTION_TRAINING, "Training curves",
            "Cross-entropy loss (log scale) and error per epoch, "
            "on the training set (solid, eval mode) and the test set (dashed).",
            lambda: F.training_curves(runs)))
    for key in keys:
        epochs = set(network_epochs(clones, key)) | set(network_epochs(summary, key))
        if len(epochs) > 1:
            plans.append(FigurePlan(
                _slug("over-training", *key), SECTION_TRAINING, f"{network_label(key)}: chunks during training",
                f"Chunk test error and R² of reconstruction at the {len(epochs)} analysed checkpoints, one line per chunk size.",
                lambda key=key: F.metrics_over_training(key, clones, summary)))
    return plans, notes


def _render(plan: FigurePlan, folder: Path) -> RenderedFigure:
    figure = plan.make()
    try:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=PNG_DPI)
        png = buffer.getvalue()
        (folder / f"{plan.name}.png").write_bytes(png)
        # The layout solved for the PNG holds for the SVG too (it is in figure units): skip solving it again.
        figure.set_layout_engine("none")
        # svg.hashsalt is read when saving (not when the figure is built): without it the clip-path ids are
        # random and the same tables give different SVG bytes.
        with plt.rc_context({"svg.hashsalt": "mitosis"}):
            figure.savefig(folder / f"{plan.name}.svg", format="svg", metadata={"Date": None})
    finally:
        plt.close(figure)
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # the PNG IHDR chunk
    scale = SCREEN_PX_PER_INCH / PNG_DPI
    return RenderedFigure(plan.name, plan.section, plan.title, plan.caption, png, round(width * scale), round(height * scale))


def write_report_files(inputs: ReportInputs, folder: Path, title: str,
                       on_figure: Callable[[str], None] | None = None) -> tuple[list[dict[str, str]], list[str]]:
    """Draw every figure the tables support and write index.html, summary.md and figures/ into `folder`.

    Returns the figures written (name, title, section, png and svg paths relative to `folder`) and the
    notes on what was skipped. `on_figure(name)` is called after each figure (for progress).
    """
    plans, notes = plan_figures(inputs)
    figure_dir = folder / "figures"
    figure_dir.mkdir()
    rendered = []
    for plan in plans:
        rendered.append(_render(plan, figure_dir))
        if on_figure is not None:
            on_figure(plan.name)
    doc = ReportDocument(
        title=title, version=__version__, figures=rendered, tables=summary_tables(inputs),
        inputs=[(str(f.path), f.kind, f.sha256, f.rows) for f in inputs.files], notes=notes, intros=SECTION_INTROS,
    )
    (folder / "index.html").write_text(render_html(doc), encoding="utf-8")
    (folder / "summary.md").write_text(render_markdown(doc), encoding="utf-8")
    listed = [{"name": f.name, "title": f.title, "section": f.section,
               "png": f"figures/{f.name}.png", "svg": f"figures/{f.name}.svg"} for f in rendered]
    return listed, notes
