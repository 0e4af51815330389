"""Ensemble members: logits stacked in order, pools by width, and members that did not see the same samples."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import ActivationFile
from mitosis_cli.stages.ensemble import EnsembleSettings, check_members, gather_members
from tests.io.test_ensemble_tables import toy_members, write_member


def load_members(paths: list[Path]):
    files = [ActivationFile(p) for p in paths]
    check_members(files, EnsembleSettings())
    return gather_members(files)


def test_load_members_stacks_logits_in_order(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=3, width=8)
    found = load_members(paths)
    assert found.splits == ("train", "test") and found.logits["test"].shape == (3, 6, 3)
    assert found.pools() == {8: [0, 1, 2]}
    with h5py.File(paths[1]) as h5:
        np.testing.assert_array_equal(found.logits["train"][1], h5["train/logits"][...])
        np.testing.assert_array_equal(found.labels["test"], h5["test/labels"][...])


def test_pools_group_by_width_and_sort_by_seed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = {"test": rng.integers(0, 3, 4)}
    paths = [write_member(tmp_path / f"{w}-{s}.h5", {"test": rng.standard_normal((4, 3))}, labels, s, width=w)
             for w, s in [(8, 5), (4, 2), (8, 1), (4, 0)]]
    found = load_members(paths)
    assert found.pools() == {4: [3, 1], 8: [2, 0]}


def _relabel(path: Path) -> None:
    with h5py.File(path, "r+") as h5:
        h5["test/labels"][0] = (h5["test/labels"][0] + 1) % 3


def _reorder(path: Path) -> None:
    with h5py.File(path, "r+") as h5:
        for key in ("features", "logits", "labels"):
            h5[f"test/{key}"][...] = h5[f"test/{key}"][...][::-1]


@pytest.mark.parametrize("spoil, message", [
    (_relabel, "test labels differ from"),
    (_reorder, "same samples in the same order"),
])
def test_members_must_share_samples(tmp_path: Path, spoil, message: str) -> None:
    paths = toy_members(tmp_path)
    spoil(paths[2])
    with pytest.raises(InputError, match=message) as err:
        load_members(paths)
    assert str(paths[2]) in str(err.value) and "\n" not in str(err.value)


def test_different_splits_are_refused(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=2) + toy_members(tmp_path, count=3, splits=("test",), prefix="t")[2:]
    with pytest.raises(InputError, match="set of splits"):
        load_members(paths)


def test_different_sample_counts_are_refused(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=2) + toy_members(tmp_path, count=3, n=7, prefix="n")[2:]
    with pytest.raises(InputError, match="number of train samples"):
        load_members(paths)


def test_one_member_and_duplicates_are_refused(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=2)
    with pytest.raises(InputError, match="at least 2"):
        load_members(paths[:1])
    with pytest.raises(InputError, match="a single network"):
        load_members([paths[0], *toy_members(tmp_path, count=1, width=8, prefix="w")])
    with pytest.raises(InputError, match="already given"):
        load_members([paths[0], paths[1], paths[0]])


def test_noise_input_controls_are_refused(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=2)
    with h5py.File(paths[1], "r+") as h5:
        h5.attrs["inputs"] = "gaussian-noise"
    with pytest.raises(InputError, match="gaussian-noise"):
        load_members(paths)


def test_the_first_differing_label_is_named(tmp_path: Path) -> None:
    paths = toy_members(tmp_path)
    with h5py.File(paths[1], "r+") as h5:
        h5["test/labels"][3] = (h5["test/labels"][3] + 1) % 3
    with pytest.raises(InputError, match=re.escape(f"test labels differ from {paths[0]} (first at sample 3)")):
        load_members(paths)


def test_members_of_another_data_set_are_refused(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=2)
    with h5py.File(paths[0]) as h5:
        logits = {s: h5[f"{s}/logits"][...] for s in ("train", "test")}
        labels = {s: h5[f"{s}/labels"][...] for s in ("train", "test")}
    other = write_member(tmp_path / "other.h5", logits, labels, seed=7, dataset="other")
    with pytest.raises(InputError) as err:
        load_members([*paths, other])
    assert str(err.value).startswith(f"{other}: the data set is 'other' but {paths[0]} has 'toy'; ")


def test_a_different_class_count_or_set_of_splits_is_named(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=2)
    rng = np.random.default_rng(5)
    four = write_member(tmp_path / "four.h5", {s: rng.standard_normal((6, 4)) for s in ("train", "test")},
                        {s: rng.integers(0, 4, 6) for s in ("train", "test")}, seed=7)
    with pytest.raises(InputError) as err:
        load_members([*paths, four])
    assert str(err.value).startswith(f"{four}: the number of classes is 4 but {paths[0]} has 3; ")
    test_only = toy_members(tmp_path, count=3, splits=("test",), prefix="t")[2]
    with pytest.raises(InputError) as err:
        load_members([*paths, test_only])
    assert str(err.value).startswith(f"{test_only}: the set of splits is ['test'] but {paths[0]} has ['test', 'train']; ")


def test_a_network_given_twice_names_where_it_was_first(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=2)
    with pytest.raises(InputError, match=re.escape(f"was already given by {paths[1]};")):
        load_members([paths[0], paths[1], paths[1]])
