"""`mitosis clones`: measure how the last hidden layer splits into clones; write clones(-summary).parquet."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, progress, say, stderr
from mitosis_cli.runtime import set_threads

if TYPE_CHECKING:
    from mitosis_cli.stages.clone_summary import NetworkClones
    from mitosis_cli.stages.clones import CloneSettings


def clone_settings(params: Mapping[str, Any]) -> CloneSettings:
    """The stage settings of the parsed options of `mitosis clones` (the sweep parses its clones options so too)."""
    from mitosis_cli.stages.clones import CloneSettings

    return CloneSettings(
        inputs=tuple(params["inputs"] or ()), sizes=options.int_list(params["sizes"], "--sizes", minimum=1),
        **{key: params[key] for key in ("out", "repeats", "acc_repeats", "seed", "rescale", "r2_threshold", "ii_points",
                                        "ii_k", "error_inf", "ensemble", "force", "device", "threads")})


def growth_text(networks: list[NetworkClones], growth: dict[str, Any]) -> str:
    """The growth fit of the number of clones with the width, with its status when it is not ``ok``."""
    critical, slope = growth["critical_width"], growth["clones_per_width_slope"]
    status = growth.get("growth_status")
    if status is None:  # a table written before the status column: the fit's own condition
        above = {net.width for net in networks if net.width > critical}
        status = "ok" if len(above) >= 3 else "undetermined: fewer than three widths above the critical width"
    fit = f"critical width {critical:.0f} neurons, {slope:.4g} clones per neuron of width"
    if status == "ok":
        return f"clones grow above a {fit} ({len(networks)} networks)"
    return f"growth of the number of clones with the width: {status} (the fit gave {fit})"


def show_clones(networks: list[NetworkClones], growth: dict[str, Any]) -> None:
    """The per-network clone table (R^2 near the clone size) and the growth fit, on stderr."""
    from rich.table import Table

    table = Table(title="mitosis clones", title_justify="left")
    for name in ("network", "W", "clone size", "interval", "clones", "R^2 by chunk size", "regime (top C-1 share)"):
        table.add_column(name, justify="left" if name in ("network", "R^2 by chunk size", "regime (top C-1 share)") else "right")
    for net in networks:
        sizes = sorted(s for s, v in net.r2.items() if v is not None)
        near = [s for s in sizes if net.clone_size / 4 <= s <= 2 * net.clone_size] or sizes[-3:]
        r2 = "  ".join(f"{s}: {net.r2[s]:.3f}" for s in near)
        share = (net.collapse.get("test") or net.collapse.get("train") or {}).get("top_share")
        regime = f"{net.regime or '-'}" + (f" ({share:.4f})" if share is not None else "")
        table.add_row(escape(net.label), str(net.width), f"{net.clone_size:.1f}",
                      f"[{net.clone_size_lo:.1f}, {net.clone_size_hi:.1f}]", f"{net.n_clones:.2f}", r2, escape(regime))
    stderr.print(table)
    for net in networks:
        if net.clone_size_status not in (None, "ok"):
            stderr.print(f"note: {net.label}: clone size {net.clone_size_status}", markup=False)
    if "critical_width" in growth:
        stderr.print(growth_text(networks, growth), markup=False)


def clones(
    inputs: Annotated[list[Path] | None, typer.Argument(metavar="ACTS...", help="Activation files (.h5) from `mitosis extract`.", show_default=False)] = None,
    sizes: Annotated[str | None, typer.Option("--sizes", rich_help_panel=options.MEASURE, help="Chunk sizes, e.g. 1,2,4 or 8-256:x2 (doubling); default: powers of two up to W, and W.")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, rich_help_panel=options.MEASURE, help="Random chunks per size for R^2, residuals and Information Imbalance.")] = 40,
    acc_repeats: Annotated[int, typer.Option("--acc-repeats", min=1, rich_help_panel=options.MEASURE, help="Random chunks per size for chunk and probe accuracy.")] = 100,
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=options.MEASURE, help="Seed of the chunk draws and subsamples.")] = 0,
    rescale: Annotated[bool, typer.Option("--rescale", rich_help_panel=options.MEASURE, help="Also score the restricted head with its weights times W / chunk size.")] = False,
    ii_points: Annotated[int, typer.Option("--ii-points", min=0, rich_help_panel=options.MEASURE, help="Rows (seeded subsample) for the Information Imbalance; 0 skips it.")] = 2000,
    ii_k: Annotated[int, typer.Option("--ii-k", min=1, rich_help_panel=options.MEASURE, help="Nearest neighbours for the Information Imbalance.")] = 1,
    r2_threshold: Annotated[float, typer.Option("--r2-threshold", min=0.0, max=1.0, rich_help_panel=options.FITS, help="Mean R^2 that defines the clone size.")] = 0.99,
    error_inf: Annotated[float | None, typer.Option("--error-inf", rich_help_panel=options.FITS, help="Test error of a large ensemble, for the excess error fit.")] = None,
    ensemble: Annotated[Path | None, typer.Option("--ensemble", rich_help_panel=options.FITS, help="ensemble.parquet holding error_inf (instead of --error-inf).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", rich_help_panel=options.OUTPUTS, help="Folder for clones.parquet and clones-summary.parquet (default: beside the first input).")] = None,
    force: options.Force = False,
    json_out: options.Json = False,
    device: options.Device = "auto",
    threads: options.Threads = None,
    progress_mode: options.Progress = "auto",
    quiet: options.Quiet = False,
) -> None:
    """Measure the clones of the last hidden layer: chunk accuracy, probe, R^2, residual noise, Information Imbalance.

    Networks are named by what they are (arch, width, seed, epoch from each file), and listed by data set,
    arch, width and seed. Tables made from other inputs or options are refused unless --force.

    Example: mitosis clones runs/w*/acts.h5 -o results/clones --error-inf 0.043

    Example: mitosis clones runs/*-s0/acts.h5 --ensemble results/ensemble.parquet -o results/clones

    Example: mitosis clones acts.h5 --sizes 8-256:x2 --repeats 10 --ii-points 0 --json
    """
    from mitosis_cli.stages.clones import run_clones

    settings = clone_settings(locals())
    set_threads(threads)
    with progress(progress_mode, quiet) as on_step:
        result = run_clones(settings, on_step)
    if result.skipped:
        say(f"{result.outputs[0].parent}: clones tables already measured from these inputs with these options; "
            "skipped (--force to redo)", quiet)
    for note in result.notes:
        say(note, quiet)
    if not quiet:
        show_clones(result.networks, result.growth)
    if not result.skipped:
        say(f"wrote {result.outputs[0]} and {result.outputs[1]}", quiet)
    if json_out:
        emit_json(result.to_json())


def register(app: typer.Typer) -> None:
    options.register(app, "clones", clones)
