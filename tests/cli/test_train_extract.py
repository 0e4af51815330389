"""`mitosis train` and `mitosis extract` through the real entry point, end to end on the built-in data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mitosis_cli import __version__
from mitosis_cli.cli.app import main

MITOSIS = Path(sys.executable).with_name("mitosis")
QUICK = ["--train-size", "200", "--width", "24", "--batch-size", "32", "--threads", "1", "--quiet"]


def test_train_to_zero_error_then_extract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, acts = tmp_path / "run", tmp_path / "acts.h5"
    code = main(["train", *QUICK, "--epochs", "12", "--until-zero-error", "--max-epochs", "60",
                 "--seed", "3", "-o", str(run), "--acts", str(acts), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["zero_error_epoch"] is not None and summary["final"]["train_error"] == 0.0
    assert {p.name for p in run.iterdir()} >= {"config.json", "checkpoint.pt", "history.parquet"}
    with h5py.File(acts) as f:
        attrs = dict(f.attrs)
        assert attrs["format"] == "mitosis-activations" and attrs["format_version"] == 1
        assert (attrs["width"], attrs["num_classes"], attrs["seed"], attrs["dataset"]) == (24, 10, 3, "mnist5k")
        assert attrs["epoch"] == summary["epochs"] and len(attrs["source_sha256"]) == 64
        assert json.loads(attrs["config"])["width"] == 24
        assert f["train/features"].shape == (200, 24) and f["test/features"].shape == (1000, 24)
        assert f["train/features"].dtype == np.float32 and f["train/labels"].dtype == np.int64
        assert f["head/weight"].shape == (10, 24) and f["head/bias"].shape == (10,)
        feats, logits, labels = f["train/features"][...], f["train/logits"][...], f["train/labels"][...]
        weight, bias = f["head/weight"][...], f["head/bias"][...]
    np.testing.assert_allclose(feats @ weight.T + bias, logits, rtol=1e-4, atol=1e-4)
    assert (logits.argmax(1) == labels).all()  # zero training error, read back from the file
    # extract again from the run directory: same numbers, train split only
    again = tmp_path / "again.h5"
    assert main(["extract", str(run), "-o", str(again), "--split", "train", "--quiet"]) == 0
    with h5py.File(again) as f:
        assert list(f) == ["head", "train"]
        np.testing.assert_array_equal(f["train/features"][...], feats)


def test_seeds_train_together_into_one_folder_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "w24"
    assert main(["train", *QUICK, "--epochs", "2", "--seeds", "0-2", "-o", str(base), "--acts", f"{base}-s{{seed}}/acts.h5",
                 "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["run_dir"] for r in runs] == [f"{base}-s{seed}" for seed in range(3)]
    for seed in range(3):
        with h5py.File(tmp_path / f"w24-s{seed}" / "acts.h5") as f:
            assert (f.attrs["seed"], f.attrs["width"]) == (seed, 24)
    # each folder is a single run's: training that seed alone finds it done
    assert main(["train", *QUICK, "--epochs", "2", "--seed", "1", "-o", str(tmp_path / "w24-s1"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"]


def test_untrained_and_noise_controls(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "2", "--save-epochs", "0,1", "-o", str(run)]) == 0
    assert main(["extract", str(run), "--untrained", "-o", str(tmp_path / "u.h5"), "--quiet"]) == 0
    assert main(["extract", str(run), "--epoch", "0", "-o", str(tmp_path / "e0.h5"), "--quiet"]) == 0
    assert main(["extract", str(run), "--noise-inputs", "-o", str(tmp_path / "n.h5"), "--quiet"]) == 0
    with h5py.File(tmp_path / "u.h5") as u, h5py.File(tmp_path / "e0.h5") as e0, h5py.File(tmp_path / "n.h5") as n:
        # the untrained control is the seeded initialisation, which is what epoch 0 saved
        np.testing.assert_array_equal(u["test/features"][...], e0["test/features"][...])
        assert u.attrs["epoch"] == 0 and json.loads(u.attrs["config"])["untrained"]
        assert n.attrs["inputs"] == "gaussian-noise"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "cifar10", "--data-dir", "{tmp}/nothing", "-o", "{tmp}/r"], "cifar-10-batches-py"),
        (["train", "--arch", "wrn", "--width", "30", "-o", "{tmp}/r"], "not reachable"),
        (["train", "--arch", "densenet", "--width", "100", "-o", "{tmp}/r"], "not reachable"),
        (["extract", "{tmp}/corrupt.pt"], "not a readable checkpoint"),
        (["extract", "{tmp}/missing-run"], "no such run directory"),
        (["train", "--width", "abc"], "Invalid value"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x02garbage")
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("mitosis: error:")]
    assert len(errors) == 1 and message in errors[0] + err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_console_script_and_module(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run([str(MITOSIS), "--version"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == f"mitosis {__version__}"
    bad = subprocess.run([sys.executable, "-m", "mitosis_cli", "extract", str(tmp_path / "nope")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "no such run directory" in bad.stderr
    debug = subprocess.run([str(MITOSIS), "--debug", "extract", str(tmp_path / "nope")], capture_output=True, text=True, env=env)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_sharded_extraction_merges_to_the_single_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "1", "-o", str(run)]) == 0
    assert main(["extract", str(run), "-o", str(tmp_path / "one.h5"), "--quiet"]) == 0
    parts = [tmp_path / f"part-{k}.h5" for k in range(3)]
    for k, part in enumerate(parts):
        assert main(["extract", str(run), "--shard", f"{k}/3", "-o", str(part), "--quiet"]) == 0
    with h5py.File(parts[1]) as f:
        assert f.attrs["shard"] == "1/3" and f["test/features"].shape == (333, 24)
    assert main(["merge", str(parts[2]), str(parts[0]), str(parts[1]), "-o", str(tmp_path / "merged.h5"), "--quiet"]) == 0
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "merged.h5") as b:
        assert "shard" not in b.attrs and b.attrs["source_sha256"] == a.attrs["source_sha256"]
        for key in ("train/features", "train/logits", "train/labels", "test/features", "test/labels", "head/weight"):
            np.testing.assert_array_equal(a[key][...], b[key][...])
    assert main(["merge", str(parts[0]), str(parts[1]), "-o", str(tmp_path / "bad.h5")]) == 2  # shard 2 missing
    assert main(["extract", str(run), "--shard", "3/3", "-o", str(tmp_path / "x.h5")]) == 2
    assert not (tmp_path / "bad.h5").exists() and not (tmp_path / "x.h5").exists()
