"""Exceptions that the command line turns into one clear line and an exit code."""


class InputError(Exception):
    """Bad usage or bad input: the CLI prints the message on one line and exits with code 2.

    Parameters
    ----------
    message : str
        What is wrong, naming the file or option.
    hint : str, optional
        What the user can do about it (printed after the message).
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class OutputError(Exception):
    """A real I/O failure while writing an output (a full disk, a device error): one line, exit code 1.

    The message names the output path and the system's reason (e.g. "No space left on device").
    """


class Preempted(BaseException):
    """Stopped by SIGTERM (training: after saving a checkpoint); exit code `PREEMPTED_EXIT_CODE`.

    A `BaseException`, as `KeyboardInterrupt` is: raised by the signal handler wherever the program is,
    it must not be swallowed by a library's ``except Exception``.
    """


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: a job array can requeue on this code


def exit_code(err: BaseException) -> int:
    """The exit code an error ends the program with: 2 bad input, 75 preempted, 130 interrupted, else 1."""
    if isinstance(err, InputError):
        return 2
    if isinstance(err, Preempted):
        return PREEMPTED_EXIT_CODE
    if isinstance(err, KeyboardInterrupt):
        return 130
    return 1
