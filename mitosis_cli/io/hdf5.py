"""Writing an HDF5 file so that a failed write cannot crash the process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import h5py


@contextmanager
def hdf5_writer(tmp: Path) -> Iterator[h5py.File]:
    """A new HDF5 file whose failed write cannot crash the process.

    When a write fails (full disk, file-size limit), libhdf5 keeps the file open and crashes the interpreter
    when it tries again to flush it, at close or at exit. So on any failure the file's descriptor is first
    pointed at /dev/null (the file is a temporary that is deleted anyway), and the close flushes there.
    The data are flushed inside the block, so that a failing write surfaces here and not at close.
    """
    h5 = h5py.File(tmp, "w")
    fd = h5.id.get_vfd_handle()
    try:
        yield h5
        h5.flush()
    except BaseException:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
        with suppress(Exception):  # already failing: the error that caused it is the one reported
            h5.close()
        raise
    h5.close()
