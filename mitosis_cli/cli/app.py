"""The `mitosis` Typer app and `main()`: every error is caught here and becomes one line and an exit code.

Exit codes: 0 success; 2 bad usage or bad input; 1 unexpected failure, or a write that failed (full disk,
device error: one line naming the output); 75 training preempted
(checkpoint saved, rerun with --resume). A traceback is printed only with `--debug` or MITOSIS_DEBUG=1.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import Annotated

import typer
from rich.markup import escape
from typer.exceptions import TyperException

from mitosis_cli import __version__
from mitosis_cli.cli import clones, demo, ensemble, extract, options, report, sweep, train
from mitosis_cli.cli.console import stderr
from mitosis_cli.errors import PREEMPTED_EXIT_CODE, InputError, OutputError, Preempted

app = typer.Typer(
    name="mitosis",
    help="Train wide networks, extract their last hidden layer and measure how it splits into clones.",
    no_args_is_help=True,
    add_completion=False,  # the completion scripts are generated files (completions/, docs/shell.md)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=options.Group,  # plain metavars: no <bool> on the flags
)

_debug = {"on": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mitosis {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (also MITOSIS_DEBUG=1).")] = False,
) -> None:
    """Representation mitosis in wide neural networks: train -> extract -> clones / ensemble -> report."""
    _debug["on"] = debug


for module in (train, extract, clones, ensemble, report, sweep, demo):
    module.register(app)


def _debugging(argv: list[str]) -> bool:
    return _debug["on"] or "--debug" in argv or os.environ.get("MITOSIS_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of raising."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=argv, prog_name="mitosis", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except typer.Exit as err:
        return err.exit_code
    except TyperException as err:  # usage errors (bad option, missing argument): one line and a hint
        ctx = getattr(err, "ctx", None)
        if not err.format_message():  # no arguments at all: the help was shown
            return err.exit_code
        stderr.print(f"[red]mitosis: error:[/] {escape(err.format_message())}", soft_wrap=True)
        stderr.print(f"  hint: see '{ctx.command_path if ctx else 'mitosis'} --help'", soft_wrap=True)
        return err.exit_code
    except typer.Abort:
        stderr.print("mitosis: aborted")
        return 130
    except InputError as err:
        if _debugging(argv):
            traceback.print_exc()
        stderr.print(f"[red]mitosis: error:[/] {escape(str(err))}", soft_wrap=True)
        if err.hint:
            stderr.print(f"  hint: {escape(err.hint)}", soft_wrap=True)
        return 2
    except OutputError as err:  # a real I/O failure while writing (full disk, device error): exit 1, one line
        if _debugging(argv):
            traceback.print_exc()
        stderr.print(f"[red]mitosis: error:[/] {escape(str(err))}", soft_wrap=True)
        return 1
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS):
            return _unexpected(err, argv)
        if _debugging(argv):
            traceback.print_exc()
        where = f"cannot write {err.filename}: " if err.filename else ""
        stderr.print(f"mitosis: error: {where}{err.strerror}", soft_wrap=True, markup=False)
        return 1
    except Preempted as err:
        stderr.print(f"mitosis: {err}", soft_wrap=True, markup=False)
        return PREEMPTED_EXIT_CODE
    except KeyboardInterrupt:
        stderr.print("mitosis: interrupted")
        return 130
    except Exception as err:  # noqa: BLE001 - the one place unexpected failures become exit code 1
        return _unexpected(err, argv)


def _unexpected(err: Exception, argv: list[str]) -> int:
    if _debugging(argv):
        traceback.print_exc()
    stderr.print(f"mitosis: unexpected error: {type(err).__name__}: {err}", soft_wrap=True, markup=False)
    stderr.print("  hint: rerun with --debug for the traceback, and report it if it persists", soft_wrap=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
