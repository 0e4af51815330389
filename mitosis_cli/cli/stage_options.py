"""Options meant for another stage (a grid file's [train] table, the sweep's --train-arg), parsed by that
stage's own parser into its settings, so a typo fails at once and not in array task 37; and the sweep's grid."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mitosis_cli.cli.clones import clone_settings
from mitosis_cli.cli.ensemble import ensemble_settings
from mitosis_cli.cli.report import report_settings
from mitosis_cli.cli.train import train_settings
from mitosis_cli.errors import InputError
from mitosis_cli.stages.base import StageSettings, option_words
from mitosis_cli.values import int_list_value, parse_int_list

if TYPE_CHECKING:
    from mitosis_cli.stages.sweep import Grid

RESERVED = {"train": ("dataset", "width", "seed", "seeds", "out", "acts", "resume"), "clones": ("out",), "ensemble": ("out",),
            "report": ("out",)}  # set by the sweep itself, per grid point or per data set
SETTINGS_OF = {"train": train_settings, "clones": clone_settings, "ensemble": ensemble_settings, "report": report_settings}


def normalise_option(key: str) -> str:
    """``--weight_decay`` / ``weight_decay`` -> ``weight-decay``."""
    return key.strip().lstrip("-").replace("_", "-")


def option_names(argv: Sequence[str]) -> set[str]:
    """The option names in an argv fragment (``--epochs=2`` and ``--epochs 2`` both give ``epochs``)."""
    return {word[2:].partition("=")[0] for word in argv if word.startswith("--") and len(word) > 2}


def _command(ctx: typer.Context, stage: str) -> Any:
    """The parser of a sub-command (typer's vendored click command), from the app's root group."""
    root: Any = ctx.find_root().command  # the app's group, which has get_command
    return root.get_command(ctx, stage)


def _switches(command: Any) -> set[str]:
    """Names of the on/off options (``--augment/--no-augment``), which accept false in a grid file."""
    return {opt[2:] for param in command.params for opt in getattr(param, "opts", [])
            if getattr(param, "secondary_opts", []) and opt.startswith("--")}


def table_argv(ctx: typer.Context, stage: str, table: Mapping[str, Any], where: str) -> list[str]:
    """A grid file's ``[stage]`` table of option = value as command-line words.

    Keys may be spelled with '_' or a leading '--'. true gives the bare flag; false gives ``--no-KEY`` for
    on/off options and is left out for plain flags (off is their default); a list repeats the option.
    """
    negatable = _switches(_command(ctx, stage))
    argv: list[str] = []
    for key, value in table.items():
        name = normalise_option(key)
        for item in value if isinstance(value, list) else [value]:
            if item is True:
                argv.append(f"--{name}")
            elif item is False:
                if name in negatable:
                    argv.append(f"--no-{name}")
            elif isinstance(item, (str, int, float)):
                argv.append(f"--{name}={item}")
            else:
                raise InputError(f"{where}: [{stage}] option {key!r}: value {item!r} is not text, a number or true/false")
    return argv


def parse_stage_options(ctx: typer.Context, stage: str, argv: Iterable[str], reserved: Iterable[str] = ()) -> StageSettings:
    """Parse `argv` with `stage`'s own parser into its settings; refuse the `reserved` options the sweep sets."""
    words = list(argv)
    clash = sorted(set(reserved) & option_names(words))
    if clash:
        raise InputError(f"{stage} option --{clash[0]} is set by the sweep itself (per grid point or per data set)")
    try:
        parsed = _command(ctx, stage).make_context(stage, words, parent=ctx.find_root())
    except typer.Exit:
        raise InputError(f"{stage} options of the sweep: --help is not an option to sweep with") from None
    except typer.TyperException as err:  # a usage error of the stage's parser: the message names the option
        raise InputError(f"{stage} options of the sweep: {err.format_message()}",
                         hint=f"see 'mitosis {stage} --help' for its options") from None
    return SETTINGS_OF[stage](parsed.params)


def sweep_grid(ctx: typer.Context, grid_file: Path | None, out: Path | None, datasets: list[str] | None, widths: str | None,
               seeds: str | None, shortcuts: list[tuple[str, Any]], runtime: list[tuple[str, Any]], raw: dict[str, list[str]]) -> Grid:
    """Merge the grid file with the command line (the command line wins) into a Grid."""
    from mitosis_cli.stages.sweep import STAGES, Grid, check_dataset_name, load_grid_file

    data = load_grid_file(grid_file) if grid_file is not None else {}
    where = str(grid_file) if grid_file is not None else "grid"
    listed = data.get("datasets", data.get("dataset", ["mnist5k"]))
    names = datasets or ([listed] if isinstance(listed, str) else listed)
    if not isinstance(names, list) or not all(isinstance(d, str) for d in names):
        raise InputError(f"{where}: datasets must be a list of names, got {listed!r}")
    if widths is not None:
        width_list = parse_int_list(widths, "--widths", minimum=1)
    elif "widths" in data:
        width_list = int_list_value(data["widths"], f"{where}: widths", minimum=1)
    else:
        raise InputError("no widths: give --widths, e.g. --widths 16,64,256, or widths in the --grid file")
    seed_list = (parse_int_list(seeds, "--seeds") if seeds is not None
                 else int_list_value(data["seeds"], f"{where}: seeds") if "seeds" in data else (0,))
    templates = {}
    for stage in STAGES:
        argv = [*table_argv(ctx, stage, data.get(stage, {}), where), *option_words(shortcuts if stage == "train" else []),
                *option_words(runtime if stage in ("train", "clones") else []), *raw[stage]]
        templates[stage] = parse_stage_options(ctx, stage, argv, RESERVED[stage])
    return Grid(out or Path(str(data.get("out", "sweep"))), tuple(dict.fromkeys(check_dataset_name(d) for d in names)),
                dict.fromkeys(width_list, seed_list), **templates)
