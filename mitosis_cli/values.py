"""One parser per kind of option value, shared by every command and by grid files.

Integer lists have one grammar everywhere (widths, seeds, chunk sizes, ensemble members, epochs):
comma-separated items, each an integer ``N``, a range ``A-B`` (every integer from A to B), a range
with a step ``A-B:S`` (A, A+S, ... up to B) or a doubling range ``A-B:x2`` (A, 2A, 4A, ... up to B;
any factor ``xF`` with F >= 2). So ``0-3`` is 0,1,2,3 and ``8-64:x2`` is 8,16,32,64, whatever the
option. Results are sorted and without repeats.
"""

from __future__ import annotations

import math

from mitosis_cli.errors import InputError

INT_LIST_EXAMPLES = "e.g. 16,64,256 or 0-3 or 8-256:x2"
MAX_LIST_VALUES = 100_000  # far beyond any grid; a range such as 0-10**12 would fill the memory before anything ran


def _item(text: str) -> list[int]:
    """One item of an integer list (ValueError when it is not in the grammar)."""
    start, dash, rest = text.partition("-")
    if not dash or not start:  # a single (possibly negative) integer
        return [int(text)]
    stop, colon, step = rest.partition(":")
    a, b = int(start), int(stop)
    if b < a:
        raise ValueError(f"the range {text} runs backwards")
    count = (b - a) // max(1, int(step) if colon and step.isdigit() else 1) + 1  # before a list is made of it
    if count > MAX_LIST_VALUES and not step.startswith("x"):
        raise ValueError(f"the range {text} holds {count} values; a list holds at most {MAX_LIST_VALUES}")
    if not colon:
        return list(range(a, b + 1))
    if step.startswith("x"):
        factor = int(step[1:])
        if factor < 2 or a < 1:
            raise ValueError(f"{text}: a doubling range needs a start >= 1 and a factor >= 2, e.g. 8-256:x2")
        values = []
        while a <= b:
            values.append(a)
            a *= factor
        return values
    if int(step) < 1:
        raise ValueError(f"{text}: the step must be at least 1")
    return list(range(a, b + 1, int(step)))


def parse_int_list(text: str, where: str, minimum: int | None = 0) -> tuple[int, ...]:
    """Parse an integer list in the shared grammar (see the module docstring).

    Parameters
    ----------
    text : str
        The option's value, e.g. ``"0-3,8"``.
    where : str
        What is being parsed, for the error message (``"--seeds"``, ``"grid.toml: widths"``).
    minimum : int or None
        Smallest allowed value (None: no bound).

    Raises
    ------
    InputError
        One line naming `where` when the text is not in the grammar, empty, or below `minimum`.
    """
    values: set[int] = set()
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        try:
            values.update(_item(item))
        except ValueError as err:
            reason = str(err) if str(err).startswith(("the range", item)) else f"expected integers or ranges, {INT_LIST_EXAMPLES}"
            raise InputError(f"{where} {text!r}: {reason}") from None
    if not values:
        raise InputError(f"{where} {text!r}: no values ({INT_LIST_EXAMPLES})")
    if minimum is not None and min(values) < minimum:
        raise InputError(f"{where} {text!r}: values must be at least {minimum}")
    return tuple(sorted(values))


def int_list_value(value: object, where: str, minimum: int | None = 0) -> tuple[int, ...]:
    """A grid file's integer list: a list of integers, one integer, or text in the shared grammar."""
    if isinstance(value, bool):
        raise InputError(f"{where}: expected integers, got {value!r}")
    if isinstance(value, int):
        return parse_int_list(str(value), where, minimum)
    if isinstance(value, str):
        return parse_int_list(value, where, minimum)
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return parse_int_list(",".join(str(v) for v in value), where, minimum)
    raise InputError(f"{where}: expected a list of integers or a text like 0-3, got {value!r}")


def parse_shard(text: str, where: str = "--shard") -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 0 <= K < N (part K of N, counted from 0)."""
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit()) or not 0 <= int(k) < int(n):
        raise InputError(f"{where} {text!r}: expected K/N with 0 <= K < N, e.g. 0/4")
    return int(k), int(n)


def parse_float_list(text: str, where: str) -> tuple[float, ...]:
    """``"0.485,0.456,0.406"`` -> (0.485, 0.456, 0.406): comma-separated finite numbers (per-channel values)."""
    try:
        values = tuple(float(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise InputError(f"{where} {text!r}: expected comma-separated numbers, e.g. 0.485,0.456,0.406") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise InputError(f"{where} {text!r}: expected comma-separated finite numbers, e.g. 0.485,0.456,0.406")
    return values
