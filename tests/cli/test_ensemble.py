"""`mitosis ensemble` end to end on tiny hand-checkable logits, its caching, and its refusals."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mitosis_cli.cli.app import main
from mitosis_cli.io.ensemble_tables import read_ensemble_table, read_error_inf
from tests.analysis.test_ensembles import LABELS, LOGITS, bias_variance_by_hand, ensemble_by_hand, metrics_by_hand, softmax_row
from tests.io.test_ensemble_tables import toy_members, write_member

TRAIN_ORDER = [1, 2, 0]  # on train, member k has the test logits of member TRAIN_ORDER[k]: splits must not mix


def rows_of(path: Path, **where: object) -> list[dict]:
    table, _ = read_ensemble_table(path)
    return [r for r in table.to_pylist() if all(r[k] == v for k, v in where.items())]


def values(path: Path, **where: object) -> dict[str, float]:
    return {r["metric"]: r["value"] for r in rows_of(path, **where)}


@pytest.fixture
def hand_members(tmp_path: Path) -> list[Path]:
    """3 networks (seeds 0-2) whose last layer is their logits (identity head, zero bias), 5 samples, 3 classes."""
    return [write_member(tmp_path / f"s{k}.h5", {"train": LOGITS[TRAIN_ORDER[k]], "test": LOGITS[k]},
                         {"train": LABELS, "test": LABELS}, seed=k) for k in range(3)]


def test_table_matches_hand_computation(hand_members: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ensemble.parquet"
    assert main(["ensemble", *map(str, hand_members[::-1]), "-o", str(out), "--repeats", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    hand = {split: {k: metrics_by_hand(ensemble_by_hand([k], "logits"), list(LABELS)) for k in range(3)} for split in ("test",)}
    # every subset of the 3-network pool fits in 5 repeats, so each size enumerates them in order
    for size in (1, 2, 3):
        for repeat, subset in enumerate(itertools.combinations(range(3), size)):
            want_test = metrics_by_hand(ensemble_by_hand(list(subset), "logits"), list(LABELS))
            want_train = metrics_by_hand(ensemble_by_hand([TRAIN_ORDER[k] for k in subset], "logits"), list(LABELS))
            assert values(out, kind="ensemble", width=3, members=size, repeat=repeat, split="test") == pytest.approx(want_test)
            assert values(out, kind="ensemble", width=3, members=size, repeat=repeat, split="train") == pytest.approx(want_train)
        assert not rows_of(out, kind="ensemble", members=size, repeat=math.comb(3, size))
    for seed in range(3):
        assert values(out, kind="wide", width=3, members=1, repeat=seed, split="test") == pytest.approx(hand["test"][seed])
    error_inf = metrics_by_hand(ensemble_by_hand([0, 1, 2], "logits"), list(LABELS))["error"]
    assert read_error_inf(out) == pytest.approx(error_inf)
    assert rows_of(out, kind="error-inf")[0] | {"value": 0} == {"kind": "error-inf", "width": 3, "members": 3, "repeat": 0,
                                                                "split": "test", "metric": "error", "value": 0}
    assert values(out, kind="bias-variance", split="test") == pytest.approx(bias_variance_by_hand(LOGITS, LABELS))
    assert values(out, kind="bias-variance", split="train") == pytest.approx(bias_variance_by_hand(LOGITS[TRAIN_ORDER], LABELS))
    # internal ensemble: chunk sizes 1 and 2 below W = 3; all three 1-neuron chunks summed = the network itself
    assert sorted({(r["width"], r["members"]) for r in rows_of(out, kind="chunk-average")}) == [(1, 1), (1, 2), (1, 3), (2, 1)]
    for seed in range(3):
        for draw in range(5):
            got = values(out, kind="chunk-average", width=1, members=3, repeat=seed * 5 + draw, split="test")
            assert got == pytest.approx(hand["test"][seed])
            one = values(out, kind="chunk-average", width=1, members=1, repeat=seed * 5 + draw, split="test")
            # one neuron j of the identity head reads out logit j and 0 for the other classes
            singles = [metrics_by_hand([softmax_row([z[j] if c == j else 0.0 for c in range(3)]) for z in LOGITS[seed]],
                                       list(LABELS))
                       for j in range(3)]
            assert any(one == pytest.approx(s) for s in singles)
    assert report["error_inf"] == pytest.approx(error_inf) and report["skipped"] is False and report["split"] == "test"
    single = np.mean([hand["test"][k]["error"] for k in range(3)])
    assert report["widths"]["3"] == pytest.approx({
        "networks": 3, "single_error": single, "ensemble_members": 3, "ensemble_error": error_inf,
        **bias_variance_by_hand(LOGITS, LABELS)})


def test_probability_averaging(hand_members: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "probs.parquet"
    assert main(["ensemble", *map(str, hand_members), "-o", str(out), "--combine", "probs", "--sizes", "2", "-q"]) == 0
    for repeat, subset in enumerate(itertools.combinations(range(3), 2)):
        want = metrics_by_hand(ensemble_by_hand(list(subset), "probs"), list(LABELS))
        assert values(out, kind="ensemble", members=2, repeat=repeat, split="test") == pytest.approx(want)
    assert {r["members"] for r in rows_of(out, kind="ensemble")} == {2}
    assert read_error_inf(out) == pytest.approx(metrics_by_hand(ensemble_by_hand([0, 1, 2], "probs"), list(LABELS))["error"])


def test_skips_same_request_and_redoes_on_force_or_new_options(hand_members: list[Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ensemble.parquet"
    args = ["ensemble", *map(str, hand_members), "-o", str(out), "--repeats", "2", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    stamp = out.stat().st_mtime_ns
    assert main(args[:1] + args[1:4][::-1] + args[4:]) == 0  # same inputs in another order
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert again["skipped"] is True and "skipped" in captured.err and out.stat().st_mtime_ns == stamp
    assert ({k: v for k, v in again.items() if k not in ("skipped", "notes")}
            == {k: v for k, v in first.items() if k not in ("skipped", "notes")})
    assert main([*args, "--force"]) == 0 and json.loads(capsys.readouterr().out)["skipped"] is False
    assert main([*args[:-2], "3", "--json"]) == 2  # new options: refused, the table kept
    assert "other options (repeats)" in capsys.readouterr().err
    assert main([*args[:-2], "3", "--json", "--force"]) == 0 and json.loads(capsys.readouterr().out)["skipped"] is False
    _, meta = read_ensemble_table(out)
    assert meta["options"]["repeats"] == 3 and sorted(i["path"] for i in meta["inputs"]) == sorted(map(str, hand_members))


def test_reproducible_draws(tmp_path: Path) -> None:
    paths = toy_members(tmp_path, count=6, n=30, classes=4, width=16)
    tables = []
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        out = tmp_path / f"{name}.parquet"
        assert main(["ensemble", *map(str, paths), "-o", str(out), "--seed", seed, "--repeats", "3", "-q"]) == 0
        tables.append(read_ensemble_table(out)[0].to_pylist())
    assert tables[0] == tables[1] and tables[0] != tables[2]
    draws = [r for r in tables[0]
             if r["kind"] == "ensemble" and r["members"] == 2 and r["metric"] == "cross_entropy" and r["split"] == "test"]
    assert len(draws) == 3 and len({r["value"] for r in draws}) > 1  # C(6, 2) = 15 > 3: random subsets


def _pools(tmp_path: Path, config: dict | None) -> list[Path]:
    rng = np.random.default_rng(5)
    labels = {"test": rng.integers(0, 3, 12)}
    return [write_member(tmp_path / f"w{w}-s{s}.h5", {"test": np.zeros((12, 3))}, labels, seed=s, width=w,
                         config=config and config | {"width": w})
            for w, seeds in ((2, range(4)), (8, range(2))) for s in seeds]


def test_comparisons_with_parameters_from_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # one-hidden-layer MLP on 3 inputs, 3 classes: P(w) = 3w + w + 3w + 3 = 7w + 3; P(8) / P(2) = 59 / 17 -> 3
    paths = _pools(tmp_path, {"arch": "mlp", "depth": 1, "ending": "relu", "dataset": "synthetic:d=3"})
    out = tmp_path / "ensemble.parquet"
    assert main(["ensemble", *map(str, paths), "-o", str(out), "--repeats", "10", "--chunk-size", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {(r["width"], r["members"]) for r in rows_of(out, kind="same-params")} == {(2, 3)}
    assert {(r["width"], r["members"]) for r in rows_of(out, kind="same-total-width")} == {(2, 4)}
    assert len(rows_of(out, kind="same-params", split="test", metric="error")) == 4  # C(4, 3) subsets
    assert values(out, kind="same-total-width", split="test") == values(out, kind="ensemble", width=2, members=4, split="test")
    with h5py.File(paths[0]) as h0, h5py.File(paths[1]) as h1, h5py.File(paths[2]) as h2:
        summed = sum(h["test/logits"][...].astype(np.float64) for h in (h0, h1, h2))
        labels = h0["test/labels"][...]
    assert values(out, kind="same-params", repeat=0, split="test")["error"] == pytest.approx(np.mean(summed.argmax(1) != labels))
    kinds = {(c["kind"], c["width"], c["members"], c["wide_width"]) for c in report["comparisons"]}
    assert kinds == {("same-total-width", 2, 4, 8), ("same-params", 2, 3, 8)}
    assert report["internal"][0]["chunk_size"] == 4 and report["internal"][0]["chunks"] == 2
    assert {r["width"] for r in rows_of(out, kind="chunk-average")} == {4}


def test_parameters_from_option_or_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _pools(tmp_path, None)
    assert main(["ensemble", *map(str, paths), "-o", str(tmp_path / "a.parquet"), "--json", "--chunk-size", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert any("same-params skipped" in note for note in report["notes"])
    assert not rows_of(tmp_path / "a.parquet", kind="same-params")
    out = tmp_path / "b.parquet"
    assert main(["ensemble", *map(str, paths), "-o", str(out), "--params-per-width", "10", "-q", "--chunk-size", "4"]) == 0
    assert {(r["width"], r["members"]) for r in rows_of(out, kind="same-params")} == {(2, 4)}


def _mismatched_labels(tmp_path: Path) -> list[str]:
    paths = toy_members(tmp_path)
    with h5py.File(paths[1], "r+") as h5:
        h5["train/labels"][2] = (h5["train/labels"][2] + 1) % 3
    return list(map(str, paths))


def _reordered(tmp_path: Path) -> list[str]:
    paths = toy_members(tmp_path, n=8)
    with h5py.File(paths[2], "r+") as h5:
        order = np.roll(np.arange(8), 1)
        for key in ("features", "logits", "labels"):
            h5[f"test/{key}"][...] = h5[f"test/{key}"][...][order]
    return list(map(str, paths))


@pytest.mark.parametrize("make, message", [
    (_mismatched_labels, "train labels differ"),
    (_reordered, "test labels differ"),
    (lambda tmp: list(map(str, toy_members(tmp, count=1))), "at least 2 activation files"),
    (lambda tmp: list(map(str, toy_members(tmp, count=2) + toy_members(tmp, count=3, splits=("test",), prefix="t")[2:])),
     "set of splits"),
    (lambda tmp: [*map(str, toy_members(tmp, count=2)), str(tmp / "missing.h5")], "no such file"),
    (lambda tmp: [*map(str, toy_members(tmp, count=2)), "--combine", "median"], "--combine 'median'"),
    (lambda tmp: [*map(str, toy_members(tmp, count=2, width=8)), "--chunk-size", "8"], "narrower than the widest"),
    (lambda tmp: [*map(str, toy_members(tmp, count=2)), "--sizes", "1,x"], "--sizes '1,x'"),
])
def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], make, message: str) -> None:
    args = make(tmp_path)
    assert main(["ensemble", *args, "-o", str(tmp_path / "e.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mitosis: error:") and message in err[0], err
    assert not (tmp_path / "e.parquet").exists()


def test_single_network_per_width_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    labels = {"test": rng.integers(0, 3, 5)}
    paths = [write_member(tmp_path / f"w{w}.h5", {"test": rng.standard_normal((5, 3))}, labels, seed=0, width=w) for w in (4, 8)]
    assert main(["ensemble", *map(str, paths), "-o", str(tmp_path / "e.parquet")]) == 2
    err = capsys.readouterr().err
    assert "every width has a single network" in err and "Traceback" not in err


def test_console_script(hand_members: list[Path], tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "mitosis"
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}
    bad = subprocess.run([str(script), "ensemble", str(hand_members[0])], capture_output=True, text=True, env=env, timeout=120)
    assert (bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1
            and "Traceback" not in bad.stderr)
    good = subprocess.run([str(script), "ensemble", *map(str, hand_members), "--json", "-q", "--repeats", "2"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert good.returncode == 0 and good.stderr == "", good.stderr
    report = json.loads(good.stdout)
    assert report["output"] == "ensemble.parquet" and (tmp_path / "ensemble.parquet").is_file()
    assert report["error_inf"] == pytest.approx(read_error_inf(tmp_path / "ensemble.parquet"))


@pytest.mark.parametrize("widest, status", [(1, "undetermined: a single network of width 8"),
                                            (3, "rough: an ensemble of only 3 networks of width 8"), (4, "ok")])
def test_error_inf_says_what_it_rests_on(tmp_path: Path, capsys: pytest.CaptureFixture[str], widest: int, status: str) -> None:
    rng = np.random.default_rng(1)
    labels = {"test": rng.integers(0, 3, 6)}
    paths = [write_member(tmp_path / f"w{w}-s{s}.h5", {"test": rng.standard_normal((6, 3))}, labels, seed=s, width=w)
             for w, seeds in ((4, 2), (8, widest)) for s in range(seeds)]
    assert main(["ensemble", *map(str, paths), "-o", str(tmp_path / "e.parquet"), "--repeats", "2", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["error_inf_status"].startswith(status) and report["error_inf_members"] == widest
    assert report["error_inf"] == pytest.approx(read_error_inf(tmp_path / "e.parquet"))
    line = next(line for line in captured.err.splitlines() if line.startswith("error_inf"))
    assert f"ensemble of {widest} networks of width 8" in line and (status in line) == (status != "ok")
