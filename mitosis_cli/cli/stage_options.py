"""Options meant for another stage (a grid file's [train] table, the sweep's --train-arg), parsed by that
stage's own parser into its settings, so a typo fails at once and not in array task 37."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import typer

from mitosis_cli.cli.clones import clone_settings
from mitosis_cli.cli.ensemble import ensemble_settings
from mitosis_cli.cli.report import report_settings
from mitosis_cli.cli.train import train_settings
from mitosis_cli.errors import InputError
from mitosis_cli.stages.base import StageSettings

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
