"""Range checks of option values shared by the stages' `check()` methods: one line naming the option.

Every option has a range that is checked before any work starts (and before a sweep runs its first
step), so a value no library call can use never reaches one.
"""

from __future__ import annotations

import math
import re

from mitosis_cli.errors import InputError

SEED_MAX = (1 << 63) - 1  # seeds are stored as int64 (activation files, tables)
MAX_REPEATS = 1_000_000  # random draws per size: far beyond any protocol, well below what memory holds
_DEVICE = re.compile(r"(auto|(cpu|cuda)(:\d+)?)")


def check_int(option: str, value: int | None, least: int | None = None, most: int | None = None) -> None:
    """An integer option (None: not given) within [least, most]."""
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{option} must be an integer, got {value!r}")
    if (least is not None and value < least) or (most is not None and value > most):
        bounds = (f"between {least} and {most}" if least is not None and most is not None
                  else f"at least {least}" if least is not None else f"at most {most}")
        raise InputError(f"{option} must be {bounds}, got {value}")


def check_float(option: str, value: float | None, least: float | None = None, most: float | None = None,
                above: float | None = None, below: float | None = None) -> None:
    """A finite number option (None: not given): least <= value <= most, above < value < below."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{option} must be a finite number, got {value!r}")
    limits = (("at least", least, value >= (least or 0)), ("at most", most, value <= (most or 0)),
              ("above", above, value > (above or 0)), ("below", below, value < (below or 0)))
    for words, bound, ok in limits:
        if bound is not None and not ok:
            raise InputError(f"{option} must be {words} {bound:g}, got {value:g}")


def check_seed(value: int, option: str = "--seed") -> None:
    """Seeds are 0 ... 2^63 - 1 (numpy refuses negative seeds; files store them as int64)."""
    check_int(option, value, 0, SEED_MAX)


def check_threads(value: int | None) -> None:
    check_int("--threads", value, 1, 4096)


def check_device(name: str) -> None:
    """auto, cpu, cuda or cuda:N (whether CUDA is there is asked when the stage picks its device)."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise InputError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)")
