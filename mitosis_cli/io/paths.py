"""What a path given to mitosis is, checked before anything is read or written.

An input must be a regular file: a FIFO would block the first read forever, and a device such as
/dev/zero never ends. An output must be of the kind the stage writes (a file where a file goes, a
folder where a folder goes; never a device, which a rename would replace) below folders, and apart
from every input: an output that is an input (the same path, a symbolic link to it or a hard link of
it), a folder replaced as a whole that holds an input, or an output below an input file, would destroy
or shadow what it is made from. Each refusal is one `InputError` line naming the path.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from mitosis_cli.errors import InputError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def kind_of(mode: int) -> str:
    """'a directory', 'a FIFO (named pipe)', ... or 'a regular file', from an `os.stat` mode."""
    return next((name for test, name in _KINDS if test(mode)), "a regular file")


def _mode_of(path: Path, named: str, kind: str) -> int:
    """The `os.stat` mode of an input (links followed); one line starting with `named` when it cannot be had."""
    try:
        return os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{named}: no such {kind}") from None
    except OSError as err:
        raise InputError(f"{named}: cannot read it ({err.strerror or err})") from None


def input_file(path: str | os.PathLike[str], what: str = "a file") -> Path:
    """`path` when it is a readable regular file (symbolic links followed), else one line naming it.

    `what` names the expected file in the message ("an activation file (.h5)").
    """
    path = Path(path)
    mode = _mode_of(path, f"{path}", "file")
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a directory, expected {what}")
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: is {kind_of(mode)}, not a regular file; expected {what}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: cannot read it (permission denied)")
    return path


def input_folder(path: str | os.PathLike[str], option: str) -> Path:
    """`path` when it is a folder that can be listed (symbolic links followed), else one line naming it."""
    path = Path(path)
    mode = _mode_of(path, f"{option} {path}", "folder")
    if not stat.S_ISDIR(mode):
        raise InputError(f"{option} {path}: is {kind_of(mode)}, not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f"{option} {path}: cannot read it (permission denied)")
    return path


_TEMPORARY_EXTRA = 24  # what a temporary's name adds to its output's: ".NAME.XXXXXXXX.tmp", ".NAME.old-XXXXXXXX"


def _existing_ancestor(path: Path) -> Path:
    return next((p for p in path.absolute().parents if os.path.lexists(p)), Path("/"))


def output_path(path: str | os.PathLike[str], folder: bool, replaced: bool = False) -> Path:
    """Check that `path` can become an output of its kind (a folder or a file), without touching anything.

    Refused: an existing path of another kind (a directory where a file goes and the reverse, a FIFO,
    a device, a socket), a path below something that is not a directory, a folder that cannot be written,
    a name too long for its temporary, and (`replaced`: a folder replaced as a whole) the current
    directory or one above it.
    """
    path = Path(path)
    if os.path.lexists(path):
        mode = os.stat(path).st_mode if os.path.exists(path) else stat.S_IFREG  # a dangling link is replaced
        if folder and not stat.S_ISDIR(mode):
            raise InputError(f"{path}: exists and is {kind_of(mode)}, not a directory", hint="choose another output (-o)")
        if not folder and not stat.S_ISREG(mode):
            raise InputError(f"{path}: exists and is {kind_of(mode)}; the output is a file",
                             hint="give a file path (-o FOLDER/NAME), or choose another output")
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise InputError(f"cannot write {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {path}: {ancestor} is not writable (permission denied)")
    longest = os.pathconf(ancestor, "PC_NAME_MAX") - _TEMPORARY_EXTRA
    too_long = [part for part in path.absolute().relative_to(ancestor).parts if len(os.fsencode(part)) > longest]
    if too_long:
        raise InputError(f"cannot write {path}: the name {too_long[0][:40]!r}... is too long (at most {longest} bytes here, "
                         "leaving room for the temporary beside it)")
    if replaced and lies_inside(Path(os.path.abspath(os.curdir)), path):
        raise InputError(f"{path}: is the current directory or one above it, which an output folder cannot replace",
                         hint="name a folder of its own (-o NAME)")
    return path


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file or folder: the same resolved path, or the same device and inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    ia = _identity(a)
    return ia is not None and ia == _identity(b)


def lies_inside(inner: Path, outer: Path) -> bool:
    """Whether `inner` is `outer` or lies below it (resolved paths, or a folder on the way with `outer`'s inode)."""
    resolved = Path(os.path.realpath(inner))
    outer_resolved = Path(os.path.realpath(outer))
    if resolved == outer_resolved or outer_resolved in resolved.parents:
        return True
    target = _identity(outer)
    return target is not None and any(_identity(p) == target for p in (resolved, *resolved.parents))


def check_apart(outputs: Sequence[tuple[Path, bool]], inputs: Iterable[Path]) -> None:
    """Refuse outputs that would destroy an input.

    Parameters
    ----------
    outputs : sequence of (path, replaced_whole)
        Each output, and whether it is a folder replaced as a whole (then no input may lie inside it).
    inputs : iterable of Path
        The files (or folders) the stage reads.
    """
    inputs = [Path(p) for p in inputs]
    for out, whole in outputs:
        for source in inputs:
            if same_file(out, source):
                raise InputError(f"{out}: is also an input ({source}); writing it would destroy the input",
                                 hint="choose another output (-o)")
            if whole and lies_inside(source, out):
                raise InputError(f"{out}: holds the input {source}; replacing the folder would destroy it",
                                 hint="choose another output folder (-o)")
            if os.path.isfile(source) and lies_inside(out, source):
                raise InputError(f"cannot write {out}: it lies below the input file {source}")
