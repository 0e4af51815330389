"""The `mitosis` Typer app and `main()`: every error is caught here and becomes one line and an exit code.

Exit codes: 0 success; 2 bad usage or bad input; 1 unexpected failure, or a write that failed (full disk,
file-size limit, device error: one line naming the output); 75 stopped by SIGTERM (training: checkpoint
saved, rerun with --resume; from the first instant, before any import of weight); 130 interrupted (Ctrl-C).
A traceback, and the warnings of the libraries, are printed only with `--debug` or MITOSIS_DEBUG=1 (or
true, yes, on). Every message is one line: a line break or control character in a path is shown escaped.
"""

from __future__ import annotations

from mitosis_cli.runtime import stop_before_start

stop_before_start()  # a SIGTERM while the libraries below load exits 75 (nothing is written yet)

import os  # noqa: E402 - after the signal handler, on purpose
import sys  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402
from rich.markup import escape  # noqa: E402
from typer.exceptions import TyperException  # noqa: E402

from mitosis_cli import __version__  # noqa: E402
from mitosis_cli.cli import clones, demo, ensemble, extract, importing, options, report, sweep, train  # noqa: E402
from mitosis_cli.cli.console import stderr  # noqa: E402
from mitosis_cli.errors import PREEMPTED_EXIT_CODE, InputError, OutputError, Preempted  # noqa: E402
from mitosis_cli.io.atomic import failure_reason, is_write_failure  # noqa: E402
from mitosis_cli.runtime import stop_on_signals  # noqa: E402

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


for module in (train, extract, importing, clones, ensemble, report, sweep, demo):
    module.register(app)


_OFF = {"", "0", "false", "no", "off", "n", "f"}


def _debugging(argv: list[str]) -> bool:
    """--debug, or MITOSIS_DEBUG set to anything but an empty, 0, false, no or off value."""
    return _debug["on"] or "--debug" in argv or os.environ.get("MITOSIS_DEBUG", "").strip().lower() not in _OFF


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters shown escaped (``\\n``), so a message stays one line."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


def _error(message: str, hint: str | None = None, argv: list[str] | None = None) -> None:
    if argv is not None and _debugging(argv):
        traceback.print_exc()
    stderr.print(f"[red]mitosis: error:[/] {escape(one_line(message))}", soft_wrap=True)
    if hint:
        stderr.print(f"  hint: {escape(one_line(hint))}", soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of raising."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings(), stop_on_signals():
        if not _debugging(argv):  # library warnings would surround the one-line error (or a clean success)
            warnings.simplefilter("ignore")
        try:
            return _run(argv)
        except KeyboardInterrupt:  # a second Ctrl-C while the first one's error was being printed
            return 130


def _run(argv: list[str]) -> int:
    try:
        code = app(args=argv, prog_name="mitosis", standalone_mode=False)
        if code == 130:  # Typer turns a Ctrl-C (KeyboardInterrupt) inside a command into this code, without a word
            stderr.print("mitosis: interrupted")
        return code if isinstance(code, int) else 0
    except typer.Exit as err:
        return err.exit_code
    except TyperException as err:  # usage errors (bad option, missing argument): one line and a hint
        ctx = getattr(err, "ctx", None)
        if not err.format_message():  # no arguments at all: the help was shown
            return err.exit_code
        _error(err.format_message(), f"see '{ctx.command_path if ctx else 'mitosis'} --help'")
        return err.exit_code
    except typer.Abort:
        stderr.print("mitosis: aborted")
        return 130
    except InputError as err:
        _error(str(err), err.hint, argv)
        return 2
    except OutputError as err:  # a real I/O failure while writing (full disk, device error): exit 1, one line
        _error(str(err), None, argv)
        return 1
    except OSError as err:
        if not is_write_failure(err):
            return _unexpected(err, argv)
        where = f"cannot write {err.filename}: " if err.filename else ""
        _error(f"{where}{failure_reason(err)}", None, argv)
        return 1
    except (MemoryError, RuntimeError) as err:  # RuntimeError: torch's allocators (CPU and CUDA) say it so
        if not isinstance(err, MemoryError) and not any(w in str(err) for w in ("out of memory", "can't allocate memory")):
            return _unexpected(err, argv)
        _error("out of memory: the data, the model or an option (--width, --repeats, ...) is too large for this machine",
               None, argv)
        return 1
    except Preempted as err:
        stderr.print(f"mitosis: {one_line(str(err))}", soft_wrap=True, markup=False)
        return PREEMPTED_EXIT_CODE
    except KeyboardInterrupt:
        stderr.print("mitosis: interrupted")
        return 130
    except Exception as err:  # noqa: BLE001 - the one place unexpected failures become exit code 1
        return _unexpected(err, argv)


def _unexpected(err: Exception, argv: list[str]) -> int:
    if _debugging(argv):
        traceback.print_exc()
    stderr.print(f"mitosis: unexpected error: {type(err).__name__}: {one_line(str(err))}", soft_wrap=True, markup=False)
    stderr.print("  hint: rerun with --debug for the traceback, and report it if it persists", soft_wrap=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
