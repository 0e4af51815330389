"""Atomic writes and output locks."""

from pathlib import Path

import pytest

from mitosis_cli.errors import InputError
from mitosis_cli.io.atomic import _umask, atomic_path, output_lock


def test_atomic_path_renames_on_success_and_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("complete")
        assert not target.exists() and tmp.parent == target.parent
    assert target.read_text() == "complete"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600

    def die_half_written() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        die_half_written()
    assert target.read_text() == "complete"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_second_writer_is_refused_and_lock_file_removed(tmp_path: Path) -> None:
    target = tmp_path / "acts.h5"
    # the second lock, asked for while the first is held, is refused
    with output_lock(target), pytest.raises(InputError, match="being written by another mitosis process"), output_lock(target):
        pass
    assert list(tmp_path.iterdir()) == []
    with output_lock(target):  # free again
        pass
