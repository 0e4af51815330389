"""Write-then-rename (files, sets of files and whole folders) and the output lock, so a killed job never
leaves a half-written output under the final name, the files of one output appear together, and two
writers of one output never both win."""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path

from mitosis_cli.errors import InputError, OutputError
from mitosis_cli.runtime import signals_deferred

# errno values of a real I/O failure (exit code 1), as opposed to a bad output path (exit code 2)
IO_FAILURES = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_ERRNO_IN_TEXT = re.compile(r"errno\s*=\s*(\d+)")


def failure_reason(err: BaseException) -> str:
    """The system's reason for a failed write, in a few words ("No space left on device").

    From the errno of an OSError, or from the ``errno = N`` that HDF5 writes into its messages, else
    the first line of the message.
    """
    number = getattr(err, "errno", None)
    if not isinstance(number, int):
        found = _ERRNO_IN_TEXT.search(str(err))
        number = int(found.group(1)) if found else None
    if isinstance(number, int) and number > 0:
        return os.strerror(number)
    return (str(err).splitlines() or [type(err).__name__])[0][:160]


def is_write_failure(err: BaseException) -> bool:
    """Whether `err` is the system refusing a write (full disk, file-size limit, quota, device error)."""
    number = getattr(err, "errno", None)
    if not isinstance(number, int):
        found = _ERRNO_IN_TEXT.search(str(err))
        number = int(found.group(1)) if found else None
    return number in IO_FAILURES


def check_room(target: str | os.PathLike[str], size: int) -> None:
    """Refuse to start writing about `size` bytes to `target` when the file-size limit (``ulimit -f``) or the
    free space of its disk cannot hold them: one line naming the output and the reason (exit code 1)."""
    import resource

    target = Path(target)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and size > limit:
        raise OutputError(f"cannot write {target}: File too large (the file-size limit, ulimit -f, is {limit} bytes; "
                          f"about {size} are needed)")
    folder = next((p for p in (target.parent, *target.parent.parents) if p.is_dir()), Path("."))
    free = shutil.disk_usage(folder).free
    if free < size:
        raise OutputError(f"cannot write {target}: No space left on device ({free} bytes free, about {size} needed)")


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: str | os.PathLike[str], mode: int = 0o666) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`.

    The temporary file lives in the same directory (so the rename is atomic on POSIX) and is
    removed if the body raises. Parent directories are created. The output gets `mode` less the
    umask, as `open` would give it (0o777 for a script that must stay executable). Inside
    `files_together` naming `target`, the rename waits for the end of that block.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        if err.errno in IO_FAILURES:
            raise OutputError(f"cannot write {target}: {failure_reason(err)}") from err
        raise InputError(f"cannot write {target}: {err.strerror or err}") from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # data on disk before the name points at it
            os.fsync(fh.fileno())
        os.chmod(tmp, mode & ~_umask())  # mkstemp makes 0600; the output gets the usual permissions
        commit = _commit.get()
        if commit is not None and commit.holds(target):
            commit.stage(target, tmp)
        else:
            os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        # A failed write (full disk, file-size limit, device error) names the output, on one line, exit code 1.
        if isinstance(err, OSError) or (isinstance(err, RuntimeError) and is_write_failure(err)):
            raise OutputError(f"cannot write {target}: {failure_reason(err)}") from err
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Make renames in `folder` durable (where the system lets a folder be opened for it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    with suppress(OSError):
        os.fsync(fd)
    os.close(fd)


class _Commit:
    """The outputs of one `files_together` block: temporaries staged by `atomic_path`, renamed in at its end."""

    def __init__(self, targets: Sequence[str | os.PathLike[str]]) -> None:
        self.targets = [Path(os.path.abspath(t)) for t in targets]
        self.staged: dict[Path, Path] = {}

    def holds(self, target: Path) -> bool:
        return Path(os.path.abspath(target)) in self.targets

    def stage(self, target: Path, tmp: Path) -> None:
        key = Path(os.path.abspath(target))
        if key in self.staged:  # written twice: the last one counts
            _remove(self.staged[key])
        self.staged[key] = tmp

    def discard(self) -> None:
        for tmp in self.staged.values():
            _remove(tmp)
        self.staged.clear()

    def apply(self) -> None:
        """Move the old outputs aside (last target first), rename the new ones in (first target first), then
        drop the old ones; on a failure put everything back as it was. Signals wait until it is done."""
        moved: list[tuple[Path, Path]] = []
        placed: list[Path] = []
        with signals_deferred():
            try:
                for target in reversed(self.targets):
                    if os.path.lexists(target):
                        backup = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
                        os.replace(target, backup)
                        moved.append((target, backup))
                for target in self.targets:
                    if target in self.staged:
                        os.replace(self.staged[target], target)
                        placed.append(target)
            except BaseException as err:
                for target in placed:
                    _remove(target)
                for target, backup in reversed(moved):
                    with suppress(OSError):  # else the old output stays under its hidden name
                        os.replace(backup, target)
                self.discard()
                if isinstance(err, OSError):
                    raise OutputError(f"cannot write {err.filename or self.targets[0]}: {failure_reason(err)}") from err
                raise
            for folder in {t.parent for t in self.targets}:
                _fsync_folder(folder)
        for _, backup in moved:
            _remove(backup)


_commit: ContextVar[_Commit | None] = ContextVar("mitosis_commit", default=None)


@contextmanager
def files_together(targets: Sequence[str | os.PathLike[str]]) -> Iterator[None]:
    """Make the outputs `targets` appear together at the end of the block, or not at all.

    Inside the block, `atomic_path` writes each target to a temporary beside it without renaming it.
    When the block ends, every target is replaced at once by what was written (a target not written
    is removed: the set is replaced as a whole); when it raises, the temporaries are removed and the
    old targets stay exactly as they were. A kill during the renames (microseconds) leaves only targets
    that are complete, each under its own name, and the old ones under hidden ``.NAME.old-*`` names.
    """
    commit = _Commit(targets)
    token = _commit.set(commit)
    try:
        yield
    except BaseException:
        _commit.reset(token)
        commit.discard()
        raise
    _commit.reset(token)
    commit.apply()


@contextmanager
def staged_entries(folder: str | os.PathLike[str], names: Sequence[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside `folder`; on success its entries `names` replace those of
    `folder` together (`files_together`); the other entries of `folder` are kept.

    An entry of `names` the new folder lacks is removed from `folder`. On failure the temporary folder
    is removed and `folder` is left as it was.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    except OSError as err:
        if err.errno in IO_FAILURES:
            raise OutputError(f"cannot write {folder}: {failure_reason(err)}") from err
        raise InputError(f"cannot write {folder}: {err.strerror or err}") from err
    try:
        yield building
        commit = _Commit([folder / name for name in names])
        for name in names:
            if os.path.lexists(building / name):
                commit.staged[Path(os.path.abspath(folder / name))] = building / name
        commit.apply()
    finally:
        shutil.rmtree(building, ignore_errors=True)


@contextmanager
def output_lock(target: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on `target` (a file or a run directory) while writing it.

    A second process asking for the same lock fails at once with one clear line instead of
    interleaving writes. The lock is an `flock` on a hidden file beside the target (``.NAME.lock``),
    released by the kernel even if the holder is killed; the holder removes the file when done, and a
    process that locked a file just removed by its holder tries again on the new one. Folders made
    for the lock are removed again when they are left empty (a failed stage leaves no trace).
    """
    import fcntl

    target = Path(target)
    lock_path = target.parent / f".{target.name}.lock"
    created = [p for p in (lock_path.parent, *lock_path.parent.parents) if not p.exists()]  # deepest first
    for _ in range(10):
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(lock_path, "a+")  # noqa: SIM115 - held open for the whole `with` body: it carries the lock
        except FileNotFoundError:  # another process removed a folder it had made, between our mkdir and open
            continue
        except OSError as err:
            if err.errno in IO_FAILURES:
                raise OutputError(f"cannot write {target}: {failure_reason(err)}") from err
            raise InputError(f"cannot write {target}: {err.strerror or err}") from err
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise InputError(f"{target} is being written by another mitosis process (lock {lock_path})",
                             hint="wait for that process to finish, or write to another path") from None
        try:
            same_file = os.stat(lock_path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        fh.close()  # the previous holder removed it between our open and our lock: lock the new one
    else:
        raise InputError(f"could not lock {target} (lock {lock_path} keeps changing)")
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # while still holding it, so nobody locks a removed file unseen
        fh.close()
        for folder in created:
            try:
                folder.rmdir()  # only when empty: nothing was written there
            except OSError:
                break


@contextmanager
def staged_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success swap it into place as `target`.

    The folder is built complete before it gets the final name, so a killed job leaves either the
    previous `target` or the new one, never a mix. An existing `target` is moved aside and removed
    only after the new folder is in place. On failure the temporary folder is removed and `target`
    is left as it was.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as err:
        if err.errno in IO_FAILURES:
            raise OutputError(f"cannot write {target}: {failure_reason(err)}") from err
        raise InputError(f"cannot write {target}: {err.strerror or err}") from err
    try:
        yield building
        os.chmod(building, 0o777 & ~_umask())  # mkdtemp makes it 0700; give it the mode mkdir would have
        with signals_deferred():
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                os.replace(target, old / target.name)
                try:
                    os.replace(building, target)
                except OSError:
                    os.replace(old / target.name, target)  # put the previous folder back
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(building, target)
    except BaseException as err:
        shutil.rmtree(building, ignore_errors=True)
        if isinstance(err, OSError) and is_write_failure(err):
            raise OutputError(f"cannot write {target}: {failure_reason(err)}") from err  # one line naming the output, exit 1
        raise
