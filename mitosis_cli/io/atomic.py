"""Write-then-rename (files and whole folders) and the output lock, so a killed job never leaves a
half-written output under the final name and two writers of one output never both win."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mitosis_cli.errors import InputError, OutputError

# errno values of a real I/O failure (exit code 1), as opposed to a bad output path (exit code 2)
_IO_FAILURES = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS}


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
    umask, as `open` would give it (0o777 for a script that must stay executable).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        if err.errno in _IO_FAILURES:
            raise OutputError(f"cannot write {target}: {err.strerror}") from err
        raise InputError(f"cannot write {target}: {err.strerror or err}") from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # data on disk before the name points at it
            os.fsync(fh.fileno())
        os.chmod(tmp, mode & ~_umask())  # mkstemp makes 0600; the output gets the usual permissions
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        # A failed write (full disk, device error) names the output, on one line, exit code 1. torch.save
        # reports it as a RuntimeError ("PytorchStreamWriter failed writing file ...").
        if isinstance(err, OSError) or (isinstance(err, RuntimeError) and "failed writing" in str(err)):
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0][:160]
            raise OutputError(f"cannot write {target}: {reason}") from err
        raise


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
        if err.errno in _IO_FAILURES:
            raise OutputError(f"cannot write {target}: {err.strerror}") from err
        raise InputError(f"cannot write {target}: {err.strerror or err}") from err
    try:
        yield building
        os.chmod(building, 0o777 & ~_umask())  # mkdtemp makes it 0700; give it the mode mkdir would have
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(building, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(building, target)
    except BaseException as err:
        shutil.rmtree(building, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in _IO_FAILURES:
            raise OutputError(f"cannot write {target}: {err.strerror}") from err  # one line naming the output, exit 1
        raise
