"""The output stamp: what an output was made from, and the one rule deciding skip, write or refuse.

Every stage describes the output it is about to write by a `Stamp` (its kind, the sha256 of every
input file in canonical order, and the options that change its numbers) and reads the stamp of what
already lies at the target. Then `decide` applies one rule for all stages:

- nothing there: write it;
- ``--force``: write it, replacing what is there (only once the new result is complete);
- the same stamp: skip the work (the output is current);
- anything else (other inputs or options, or a file mitosis did not write): refuse with one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from mitosis_cli.errors import InputError


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal options give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Stamp:
    """What an output was made from.

    Attributes
    ----------
    kind : str
        The stage that made it (``train``, ``activations``, ``clones``, ``ensemble``, ``report``).
    inputs : tuple of str
        sha256 of every input file, sorted (the order the inputs were given in does not matter).
    options : str
        Canonical JSON of the options that change the output (not where it runs or how it prints).
    """

    kind: str
    inputs: tuple[str, ...]
    options: str

    @classmethod
    def of(cls, kind: str, input_sha256s: Iterable[str], options: Mapping[str, Any]) -> Stamp:
        return cls(kind, tuple(sorted(input_sha256s)), canonical_json(dict(options)))

    def differences(self, other: Stamp) -> list[str]:
        """What differs from `other` of the same kind, in words (for the refusal message)."""
        found: list[str] = []
        if self.inputs != other.inputs:
            found.append("other input files")
        mine, theirs = json.loads(self.options), json.loads(other.options)
        changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if changed:
            found.append("other options (" + ", ".join(changed) + ")")
        return found


class Decision(Enum):
    WRITE = "write"
    SKIP = "skip"


def decide(target: Path, wanted: Stamp, found: Stamp | None, *, exists: bool, force: bool) -> Decision:
    """The one rule for an existing output (see the module docstring).

    Parameters
    ----------
    target : Path
        The output, for the message.
    wanted : Stamp
        The stamp of the output about to be made.
    found : Stamp or None
        The stamp of what lies at `target`; None when nothing readable by mitosis is there.
    exists : bool
        Whether anything lies at `target` at all.
    force : bool
        ``--force``: replace whatever is there.

    Raises
    ------
    InputError
        When `target` holds something else and `force` is off.
    """
    if not exists or force:
        return Decision.WRITE
    if found == wanted:
        return Decision.SKIP
    if found is None:
        why = "it was not written by mitosis (or is damaged)"
    elif found.kind != wanted.kind:
        why = f"it is a {found.kind} output, not a {wanted.kind} one"
    else:
        why = "it was made from " + " and ".join(wanted.differences(found))
    raise InputError(f"{target} already exists and {why}; refusing to replace it",
                     hint="use --force to replace it, or choose another output")
