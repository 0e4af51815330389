"""The train stage's `--seeds`: where each seed writes, the command it records, and how the sweep plans it."""

import re
from pathlib import Path

import pytest

from mitosis_cli.cli.app import main
from mitosis_cli.errors import InputError
from mitosis_cli.stages.sweep import Grid, GridPoint, plan
from mitosis_cli.stages.train import TrainSettings, seed_list, seed_path
from mitosis_cli.training.config import TrainConfig
from mitosis_cli.values import parse_int_list


@pytest.mark.parametrize(("path", "folder", "expected"), [
    ("runs/w16", True, "runs/w16-s3"),
    ("runs/w16-s{seed}", True, "runs/w16-s3"),
    ("runs/{seed}/net", True, "runs/3/net"),
    ("acts/w16.h5", False, "acts/w16-s3.h5"),
    ("runs/w16-s{seed}/acts.h5", False, "runs/w16-s3/acts.h5"),
    ("v1.5", True, "v1.5-s3"),
])
def test_seed_paths(path: str, folder: bool, expected: str) -> None:
    assert seed_path(Path(path), 3, folder) == Path(expected)


def test_seed_path_needs_a_name() -> None:
    with pytest.raises(InputError, match="name the output"):
        seed_path(Path("."), 0, True)


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2, 3), (0, 2, 4), (1, 2, 5, 6, 7, 10)])
def test_seed_list_is_read_back_by_the_shared_parser(seeds: tuple[int, ...]) -> None:
    text = seed_list(seeds)
    assert parse_int_list(text, "--seeds") == seeds
    assert len(text) <= len(",".join(map(str, seeds)))


def test_each_seed_is_the_run_a_single_seed_would_be() -> None:
    together = TrainSettings(config=TrainConfig(width=16, seed=0), seeds=(2, 5), out=Path("r/w16"), acts=Path("r/a.h5"),
                             resume=True)
    one = together.for_seed(5)
    assert (one.config.seed, one.out, one.acts, one.seeds, one.resume) == (5, Path("r/w16-s5"), Path("r/a-s5.h5"), (), True)
    assert one.to_argv()[:4] == ["train", "--dataset=mnist5k", "--width=16", "--seed=5"]
    assert "--seeds=2,5" in together.to_argv() and not any(w.startswith("--seed=") for w in together.to_argv())


def test_the_sweep_trains_the_seeds_of_a_width_together(tmp_path: Path) -> None:
    grid = Grid(tmp_path, ("mnist5k",), {8: (0,), 16: (3, 1, 2)})
    steps = plan(grid, "train")
    assert [s.name for s in steps] == ["w8-s0", "w16-s1-3"]
    single, together = (s.settings for s in steps)
    assert isinstance(single, TrainSettings) and isinstance(together, TrainSettings)
    assert single.seeds == () and single.out == grid.run_dir(GridPoint("mnist5k", 8, 0))
    assert together.seeds == (1, 2, 3)
    for seed in (1, 2, 3):
        point = GridPoint("mnist5k", 16, seed)
        assert together.for_seed(seed).out == grid.run_dir(point) and together.for_seed(seed).acts == grid.acts(point)
    assert steps[1].describe()["seeds"] == [1, 2, 3]


def test_seed_and_seeds_exclude_each_other(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--seed", "1", "--seeds", "0-3", "-o", str(tmp_path / "r")]) == 2
    assert "--seed and --seeds exclude each other" in capsys.readouterr().err
    assert main(["train", "--seeds", "0,x", "-o", str(tmp_path / "r")]) == 2
    assert "--seeds '0,x'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seeds, out, acts, message", [
    ((3, 1, 3), "runs/w16", None, "seed 3 more than once"),
    ((0, -2), "runs/w16", None, "--seeds must be between 0 and"),
    ((0, 1 << 63), "runs/w16", None, "--seeds must be between 0 and"),
    (tuple(range(5000)), "runs/w16", None, "at most 4096"),
    ((0, 1), "runs/{seed}/../w16", None, "run directories are one path"),
    ((0, 1), "runs/w16", "acts/{seed}/../a.h5", "activation files (--acts) are one path"),
    ((0, 1), "runs/w16", "runs/w16-s{seed}/checkpoint.pt", "is the run's own"),
])
def test_seeds_are_checked_before_any_run(tmp_path: Path, seeds: tuple[int, ...], out: str, acts: str | None,
                                          message: str) -> None:
    settings = TrainSettings(config=TrainConfig(dataset="mnist5k", width=16), seeds=seeds, out=tmp_path / out,
                             acts=None if acts is None else tmp_path / acts)
    with pytest.raises(InputError, match=re.escape(message)):
        settings.check()
    assert not any(tmp_path.iterdir())
