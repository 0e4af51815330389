"""Options shared by the sub-commands, so they are spelled and documented one way; the help panels they
sit in; the value choices that shells complete; and `Command`, which makes every help page read plainly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from mitosis_cli.values import parse_int_list

# Help panels, in the order a page shows them.
DATA, MODEL, OPTIMISATION, SCHEDULE = "Data", "Model", "Optimisation", "Schedule"
MEASURE, FITS, MODE, OUTPUTS, RUNTIME = "Measurement", "Fits", "What to do", "Outputs", "Runtime"

# Values with a fixed set of choices, for completion and the help's metavar; the stages validate them
# (tests/cli/test_help.py checks these lists against the registries they mirror).
DATASETS = ("mnist5k", "synthetic", "mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100")
ARCHS, ENDINGS = ("mlp", "wrn", "densenet"), ("relu", "batchnorm")
OPTIMIZERS, SCHEDULES = ("sgd", "adam"), ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
COMBINES, PHASES = ("logits", "probs"), ("all", "train", "analysis")
PRESETS = ("wrn28-cifar10", "densenet40-cifar10", "wrn28-cifar100", "densenet40-cifar100")
PROGRESS_MODES = ("auto", "bar", "lines", "none")


def choices(values: Sequence[str], open_set: bool = False) -> dict[str, Any]:
    """typer.Option arguments that complete `values` and show them as the metavar (`open_set`: other values
    are accepted too, e.g. synthetic:n=2000 or cuda:1, so the metavar stays TEXT)."""

    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return {"autocompletion": complete, **({} if open_set else {"metavar": "|".join(values)})}


def value_metavar(param: Any) -> str:
    """PATH, INT, FLOAT or TEXT for an option's value; nothing for a flag."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    annotation = param.type_descriptor.annotation
    inner = getattr(annotation, "__args__", (annotation,))[0] if getattr(annotation, "__origin__", None) is list else annotation
    return {Path: "PATH", int: "INT", float: "FLOAT"}.get(inner, "TEXT")


class _PlainHelp:
    """Values show as PATH, INT, FLOAT, TEXT or their choices (a|b), flags as nothing; an option whose help
    text states its default does not get typer's ``[default: ...]`` too."""

    help_panel: str | None = None  # where -h/--help goes

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # of the typer class this is mixed into
        for param in params:
            if param.param_type_name == "argument":
                if param.metavar is None:
                    param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
                param.display_type_rich = lambda ctx, _p=param: value_metavar(_p)  # typer would show <list[Path]>
            elif param.metavar is None:
                param.metavar = value_metavar(param)
            if param.name == "help":
                param.rich_help_panel = self.help_panel
            if param.help and "default" in param.help.lower():
                param.show_default = False
        return params


class Group(_PlainHelp, TyperGroup):
    """The `mitosis` command group, whose own options read as plainly as its sub-commands'."""


class Command(_PlainHelp, TyperCommand):
    """A sub-command whose help reads plainly (`_PlainHelp`), with its arguments in the usage line as NAME,
    or [NAME]... when optional and repeatable."""

    help_panel = RUNTIME

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(param.metavar if param.required else f"[{param.metavar.removesuffix('...')}]...")
        return pieces


def register(app: typer.Typer, name: str, function: Callable[..., Any]) -> None:
    """Add a sub-command with the plain help of `Command`."""
    app.command(name, cls=Command)(function)


Json = Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUTS, help="Print a JSON summary of what was written on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel=RUNTIME, help="No messages or progress on stderr.")]
Progress = Annotated[str, typer.Option(
    "--progress", rich_help_panel=RUNTIME, **choices(PROGRESS_MODES),
    help="auto: a bar on a terminal, timestamped lines otherwise (a log file); bar; lines; none.")]
Force = Annotated[bool, typer.Option("--force", rich_help_panel=OUTPUTS, help="Redo the work even if the output exists; "
                                     "replace an output made from other inputs or options.")]
Threads = Annotated[int | None, typer.Option(
    "--threads", min=1, rich_help_panel=RUNTIME, help="CPU threads for torch (default: the usable CPUs, at most 8).")]
Device = Annotated[str, typer.Option("--device", rich_help_panel=RUNTIME, **choices(DEVICES, open_set=True),
                                     help="auto, cpu, cuda or cuda:N (auto picks cuda when available).")]
DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", rich_help_panel=DATA, help="Folder in torchvision's layout for real data sets (default: $MITOSIS_DATA_DIR).")]
DryRun = Annotated[bool, typer.Option("--dry-run", rich_help_panel=MODE, help="Print the commands, one per line, and exit.")]


def int_list(text: str | None, option: str, minimum: int = 0) -> tuple[int, ...] | None:
    """An integer-list option (``16,64``, ``0-3``, ``8-256:x2``), or None when not given."""
    return None if text is None else parse_int_list(text, option, minimum)
