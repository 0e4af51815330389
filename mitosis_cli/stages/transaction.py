"""The output transaction: the one way every stage writes (docs/architecture.md, "The contracts between stages").

1. The stage validates its settings (`check()`) and opens its inputs (each reader checks kind, schema,
   types and ranges) before anything is touched.
2. `OutputTransaction(files=..., folders=..., runs=..., inputs=...)` checks, still without touching
   anything, that every output is of its kind (`io.paths.output_path`) and apart from every input
   (`io.paths.check_apart`: not the same file, no input inside a folder that is replaced as a whole).
3. ``with tx.locked():`` holds the lock of every output, so a second writer fails at once (exit code 2).
4. `tx.decide(wanted, read_stamp, force)` skips, writes or refuses by the stamps of what is there. The
   files of one output count as one: all present with one stamp is that stamp; a part left by an
   interrupted write of this very output (every present file has the wanted stamp) is written again.
5. ``with tx.writing():`` the files written inside appear together at its end, or not at all
   (`io.atomic.files_together`); a folder output is built in `io.atomic.staged_folder` and swapped in.

On any failure the temporaries and the locks are removed, folders made for them too when left empty,
and every earlier output stays exactly as it was; ``--force`` replaces only once the new result is complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from mitosis_cli.errors import InputError
from mitosis_cli.io.atomic import files_together, output_lock
from mitosis_cli.io.paths import check_apart, lies_inside, output_path
from mitosis_cli.io.stamp import Decision, Stamp, decide


def _occupied(path: Path) -> bool:
    """Whether anything is at `path` (an empty folder counts as nothing: an output may be written into it)."""
    if not os.path.lexists(path):
        return False
    return not (path.is_dir() and not path.is_symlink() and not any(path.iterdir()))


@dataclass(frozen=True)
class OutputTransaction:
    """The outputs of one stage run and the inputs they must stay apart from.

    Attributes
    ----------
    files : tuple of Path
        Output files, written together (e.g. clones.parquet and clones-summary.parquet).
    folders : tuple of Path
        Output folders replaced as a whole (a report): no input may lie inside one.
    runs : tuple of Path
        Folders whose files the stage writes one by one, each atomically (a training run, resumable):
        no input may lie inside the entries it replaces (`run_entries`).
    inputs : tuple of Path
        Every file (or folder) the stage reads.
    run_entries : tuple of str
        The entries of each folder of `runs` that the stage replaces.
    read_folders : tuple of Path
        Input folders read as a whole (an image folder): no output may lie inside one.
    """

    files: tuple[Path, ...] = ()
    folders: tuple[Path, ...] = ()
    runs: tuple[Path, ...] = ()
    inputs: tuple[Path, ...] = ()
    run_entries: tuple[str, ...] = ()
    read_folders: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        for path in self.files:
            output_path(path, folder=False)
        for path in self.folders:
            output_path(path, folder=True, replaced=True)
        for path in self.runs:
            output_path(path, folder=True)
        replaced = [(path, False) for path in self.files] + [(path, True) for path in self.folders]
        replaced += [(run / name, True) for run in self.runs for name in self.run_entries]
        check_apart(replaced, (*self.inputs, *self.read_folders))
        inside = next(((out, folder) for out in self.outputs for folder in self.read_folders if lies_inside(out, folder)), None)
        if inside:
            raise InputError(f"{inside[0]}: lies inside the input folder {inside[1]}, which is read as a whole",
                             hint="choose an output outside it (-o)")

    @property
    def outputs(self) -> tuple[Path, ...]:
        return (*self.files, *self.folders, *self.runs)

    @contextmanager
    def locked(self) -> Iterator[OutputTransaction]:
        """Hold the lock of every output, found by its resolved path (so two spellings of one output, or a link
        to it, share one lock), in one order."""
        with ExitStack() as stack:
            for path in sorted({Path(os.path.realpath(p)) for p in self.outputs}):
                stack.enter_context(output_lock(path))
            yield self

    def decide(self, wanted: Stamp, read_stamp: Callable[[Path], Stamp | None], force: bool) -> Decision:
        """Skip, write or refuse (`io.stamp.decide`), the files (or the folder) of this output counting as one.

        `read_stamp` gives the stamp of one output path, or None when it is not mitosis's (or damaged).
        """
        targets = list(self.files or self.folders)
        present = [t for t in targets if _occupied(t)]
        if not present or force:
            return Decision.WRITE
        stamps = [read_stamp(t) for t in present]
        whole = len(present) == len(targets) and all(s == stamps[0] for s in stamps)
        if whole:
            return decide(targets[0], wanted, stamps[0], exists=True, force=False)
        if all(s == wanted for s in stamps):  # what an interrupted write of this very output left: write it again
            return Decision.WRITE
        missing = [t.name for t in targets if t not in present]
        what = (f"{', '.join(t.name for t in present)} without {', '.join(missing)}" if missing
                else f"{' and '.join(t.name for t in present)} made from different inputs or options")
        raise InputError(f"{present[0].parent} holds {what} (not one output of this command); refusing to replace them",
                         hint="use --force to replace them, or choose another output")

    @contextmanager
    def writing(self) -> Iterator[None]:
        """The files written inside the block (with `io.atomic.atomic_path`) appear together at its end."""
        with files_together(self.files):
            yield

