"""`mitosis clones` end to end on small planted activation files."""

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mitosis_cli.analysis.chunks import default_sizes, draw_chunks
from mitosis_cli.analysis.clone_size import crossing_size
from mitosis_cli.cli.app import main
from mitosis_cli.io.clone_tables import read_clones, read_clones_summary
from mitosis_cli.io.tables import provenance, write_table

FAST = ["--repeats", "6", "--acc-repeats", "10", "--device", "cpu", "--quiet"]
REGIMES = {"collapsed", "noisy-clones", "no-clones"}


def _rows(table: pa.Table, **where: object) -> pa.Table:
    mask = None
    for key, value in where.items():
        m = pc.is_null(table[key]) if value is None else pc.equal(table[key], value)
        mask = m if mask is None else pc.and_(mask, m)
    return table.filter(mask)


def _planted_r2(width: int, clone_size: int, noise: float, size: int, draws: int = 400) -> float:
    """Population R^2 of planted clones from a random chunk (no regression): the planted answer.

    A neuron in the chunk is reconstructed exactly; one outside whose signal has m copies in the chunk
    keeps the explained variance 1 / (1 + noise^2 / m) of its variance 1 + noise^2; an uncovered one none.
    """
    copy_of = np.arange(width) % clone_size
    total = []
    for chunk in draw_chunks(width, size, draws, seed=99):
        m = np.bincount(copy_of[chunk], minlength=clone_size)
        outside = np.setdiff1d(np.arange(width), chunk)
        mo = m[copy_of[outside]]
        explained = size * (1 + noise**2) + np.where(mo > 0, 1.0 / (1.0 + noise**2 / np.maximum(mo, 1)), 0.0).sum()
        total.append(explained / (width * (1 + noise**2)))
    return float(np.mean(total))


def test_planted_clone_size_is_recovered(acts_factory, capsys) -> None:
    width, clone_size, noise = 64, 4, 0.02
    path = acts_factory(n=1500, width=width, clone_size=clone_size, noise=noise)
    assert main(["clones", str(path), "--repeats", "40", "--acc-repeats", "5", "--ii-points", "0", "--json", "-q"]) == 0
    facts = json.loads(capsys.readouterr().out)["files"][0]
    sizes = np.array(default_sizes(width))
    planted = crossing_size(sizes, np.array([_planted_r2(width, clone_size, noise, s) for s in sizes]), 0.99)
    # a random chunk must hold every one of the 4 signals: a coupon-collector size well above 4
    assert 10 < planted < 40
    assert facts["clone_size"] == pytest.approx(planted, rel=0.12)
    assert facts["clone_size_lo"] <= facts["clone_size"] <= facts["clone_size_hi"]
    assert facts["n_clones"] == pytest.approx(width / facts["clone_size"])


def test_default_run_writes_every_metric_and_skips_a_rerun(acts_factory, capsys) -> None:
    path = acts_factory(n=300, width=32, clone_size=4)
    assert main(["clones", str(path), "--json"]) == 0  # no other option needed
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["skipped"] is False and "clone size" in captured.err
    clones, meta = read_clones(path.parent / "clones.parquet")
    assert meta["kind"] == "clones" and meta["inputs"][0]["path"] == str(path) and len(meta["inputs"][0]["sha256"]) == 64
    metrics = {(r["split"], r["metric"]) for r in clones.select(["split", "metric"]).to_pylist()}
    for split in ("train", "test"):
        assert {(split, "chunk_accuracy"), (split, "chunk_error")} <= metrics
    assert {("train->test", m) for m in ("probe_accuracy", "probe_error", "reconstruction_r2")} <= metrics
    for m in ("reconstruction_r2", "residual_abs_corr", "residual_frob_corr", "residual_abs_skew",
              "residual_abs_excess_kurtosis", "residual_abs_sq_corr", "ii_chunk_to_full", "ii_full_to_chunk"):
        assert ("test", m) in metrics, m
    r2 = _rows(clones, metric="reconstruction_r2", split="test", chunk_size=8)
    assert len(r2) == 40 and r2["repeat"].to_pylist() == list(range(40))
    assert len(_rows(clones, metric="chunk_accuracy", split="test", chunk_size=8)) == 100
    ii = _rows(clones, metric="ii_chunk_to_full")
    assert set(ii["n_points"].to_pylist()) == {300} and set(ii["k"].to_pylist()) == {1}
    assert _rows(clones, metric="reconstruction_r2")["k"].null_count == len(_rows(clones, metric="reconstruction_r2"))
    # the full layer's restricted head is the network itself
    full = _rows(clones, metric="chunk_accuracy", split="test", chunk_size=32)["value"].to_numpy()
    with h5py.File(path) as f:
        acc = (np.argmax(f["test/logits"][...], 1) == f["test/labels"][...]).mean()
    np.testing.assert_allclose(full, acc)
    summary, _ = read_clones_summary(path.parent / "clones-summary.parquet")
    per_source = _rows(summary, chunk_size=None)
    assert set(per_source["metric"].to_pylist()) == {"clone_size", "n_clones", "top_share", "participation_ratio", "nc1",
                                                     "regime"}
    fits = _rows(summary, metric="clone_size")
    assert fits["status"].to_pylist() == ["ok"] and _rows(summary, metric="regime")["status"][0].as_py() in REGIMES
    assert set(_rows(summary, metric="top_share")["split"].to_pylist()) == {"train", "test"}
    assert _rows(summary, metric="reconstruction_r2")["status"].null_count == len(_rows(summary, metric="reconstruction_r2"))
    mean_r2 = _rows(summary, metric="reconstruction_r2", split="test", chunk_size=8)
    assert mean_r2["mean"][0].as_py() == pytest.approx(np.mean(r2["value"].to_numpy()))
    assert mean_r2["n"][0].as_py() == 40

    before = (path.parent / "clones.parquet").stat().st_mtime_ns
    assert main(["clones", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["skipped"] is True and "skipped" in captured.err
    assert (path.parent / "clones.parquet").stat().st_mtime_ns == before
    assert main(["clones", str(path), "--force", "-q"]) == 0  # redone: the same numbers (seeded)
    again, _ = read_clones(path.parent / "clones.parquet")
    assert again.equals(clones)
    assert main(["clones", str(path), "-q", "--seed", "1"]) == 2  # new options: refused, the tables kept
    assert "other options (seed)" in capsys.readouterr().err
    assert read_clones(path.parent / "clones.parquet")[0].equals(clones)
    assert main(["clones", str(path), "-q", "--seed", "1", "--force"]) == 0  # replaced only when asked
    assert not read_clones(path.parent / "clones.parquet")[0].equals(clones)


def test_widths_give_the_growth_of_clones(acts_factory, tmp_path: Path, capsys) -> None:
    paths = [str(acts_factory(name=f"w{w}.h5", n=800, width=w, clone_size=4, noise=0.02)) for w in (32, 64, 128, 256)]
    assert main(["clones", *paths, *FAST, "--ii-points", "0", "--repeats", "12", "-o", str(tmp_path / "out"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    sizes = [f["clone_size"] for f in payload["files"]]
    summary, _ = read_clones_summary(tmp_path / "out" / "clones-summary.parquet")
    across = _rows(summary, source="all")
    assert set(across["metric"].to_pylist()) == {"critical_width", "clones_per_width_slope"}
    assert across["width"].null_count == 2
    # the clone size does not depend on W, so n_clones = W / w*: slope ~ 1 / w*, critical width ~ w*
    assert payload["clones_per_width_slope"] == pytest.approx(1 / np.mean(sizes), rel=0.15)
    assert payload["critical_width"] == pytest.approx(np.mean(sizes), rel=0.25)


def test_error_inf_and_rescale(acts_factory, tmp_path: Path) -> None:
    path = acts_factory(n=300, width=32, clone_size=4)
    ens = pa.table({"kind": ["error-inf"], "metric": ["error"], "split": ["test"], "value": [0.02]})
    ens_path = write_table(tmp_path / "ensemble.parquet", ens, provenance("ensemble", [], {}, ""))
    assert main(["clones", str(path), *FAST, "--ii-points", "0", "--ensemble", str(ens_path), "--rescale"]) == 0
    summary, meta = read_clones_summary(path.parent / "clones-summary.parquet")
    assert meta["options"]["error_inf"] == 0.02 and any(i["path"] == str(ens_path) for i in meta["inputs"])
    assert _rows(summary, metric="error_inf")["mean"][0].as_py() == 0.02
    assert np.isfinite(_rows(summary, metric="excess_error_c")["mean"][0].as_py())
    excess = _rows(summary, metric="chunk_excess_error", chunk_size=8)["mean"][0].as_py()
    err = _rows(summary, metric="chunk_error", split="test", chunk_size=8)["mean"][0].as_py()
    assert excess == pytest.approx(err - 0.02)
    clones, _ = read_clones(path.parent / "clones.parquet")
    assert len(_rows(clones, metric="chunk_accuracy_rescaled", split="test", chunk_size=4)) == 10


def test_one_split_file(acts_factory, capsys) -> None:
    path = acts_factory(n=200, width=16, clone_size=4, splits=("test",))
    assert main(["clones", str(path), *FAST, "--ii-points", "50", "--ii-k", "2"]) == 0
    clones, _ = read_clones(path.parent / "clones.parquet")
    assert set(clones["split"].to_pylist()) == {"test"}
    ii = _rows(clones, metric="ii_full_to_chunk")
    assert set(ii["n_points"].to_pylist()) == {50} and set(ii["k"].to_pylist()) == {2}


def _corrupt(kind: str, path: Path) -> list[str]:
    if kind == "not-hdf5":
        path.write_bytes(b"hello")
    elif kind == "missing":
        with h5py.File(path, "r+") as f:
            del f["test/labels"]
    elif kind == "shape":
        with h5py.File(path, "r+") as f:
            del f["head/weight"]
            f.create_dataset("head/weight", data=np.zeros((4, 7), np.float32))
    elif kind == "nan":
        with h5py.File(path, "r+") as f:
            f["test/features"][5, 3] = np.inf
    elif kind == "size":
        return ["--sizes", "4,64"]
    elif kind == "bad-sizes":
        return ["--sizes", "four"]
    elif kind == "both-error-inf":
        return ["--error-inf", "0.1", "--ensemble", str(path)]
    return []


@pytest.mark.parametrize("kind, message", [
    ("not-hdf5", "not a readable HDF5 file"), ("missing", "missing dataset /test/labels"), ("shape", "has shape"),
    ("nan", "NaN or Inf"), ("size", "larger than the layer width"), ("bad-sizes", "--sizes"),
    ("both-error-inf", "not both"),
])
def test_bad_input_is_one_line_and_exit_2(acts_factory, capsys, kind: str, message: str) -> None:
    path = acts_factory(n=100, width=32, clone_size=4)
    extra = _corrupt(kind, path)
    assert main(["clones", str(path), *FAST, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (path.parent / "clones.parquet").exists()


def test_unavailable_device_is_refused(acts_factory, capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, also where there is one
    path = acts_factory(n=100, width=16, clone_size=4)
    assert main(["clones", str(path), "--device", "cuda", "-q"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_a_file_without_a_head_is_measured_without_what_needs_it(acts_factory, capsys) -> None:
    path = acts_factory(n=200, width=32, clone_size=4)
    with h5py.File(path, "r+") as f:  # as `mitosis import` writes features it has no head for
        del f["head"], f["train/logits"], f["test/logits"]
    assert main(["clones", str(path), *FAST[:-1], "--ii-points", "50", "--json"]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["files"][0]["skipped_metrics"] == ["chunk_accuracy", "chunk_error"]
    assert payload["notes"] and "no trained head" in payload["notes"][0] and "no trained head" in captured.err
    clones, _ = read_clones(path.parent / "clones.parquet")
    metrics = set(clones["metric"].to_pylist())
    assert not metrics & {"chunk_accuracy", "chunk_error"}
    assert {"reconstruction_r2", "probe_accuracy", "residual_abs_corr_paper", "ii_chunk_to_full"} <= metrics
    summary, _ = read_clones_summary(path.parent / "clones-summary.parquet")
    assert _rows(summary, metric="skipped_metrics")["status"][0].as_py().startswith("chunk_accuracy, chunk_error")
    assert _rows(summary, metric="regime")["status"][0].as_py() in REGIMES


def test_networks_are_named_by_what_they_are_in_width_order(tmp_path: Path, capsys) -> None:
    """Two networks in two folders, both files named acts.h5, given wide first: two labels, narrow first."""
    from tests.conftest import write_planted_acts

    for folder, width in (("a", 64), ("b", 32)):
        (tmp_path / folder).mkdir()
        write_planted_acts(tmp_path / folder / "acts.h5", n=200, width=width, clone_size=4, seed=1, arch="mlp-2-relu")
    files = [str(tmp_path / "a" / "acts.h5"), str(tmp_path / "b" / "acts.h5")]
    assert main(["clones", *files, *FAST[:-1], "--ii-points", "0", "-o", str(tmp_path / "out"), "--json"]) == 0
    captured = capsys.readouterr()
    listed = json.loads(captured.out)["files"]
    assert [(f["label"], f["source"]) for f in listed] == [("mlp-2-relu w32 s1 e0", files[1]), ("mlp-2-relu w64 s1 e0", files[0])]
    table = captured.err.split("mitosis clones", 1)[1]
    assert table.index("mlp-2-relu w32 s1 e0") < table.index("mlp-2-relu w64 s1 e0") and "acts.h5 " not in table

    # the same network in two folders: the label says which file is which
    (tmp_path / "c").mkdir()
    copy = tmp_path / "c" / "acts.h5"
    copy.write_bytes((tmp_path / "b" / "acts.h5").read_bytes())
    assert main(["clones", files[1], str(copy), *FAST, "--ii-points", "0", "-o", str(tmp_path / "out2"), "--json"]) == 0
    labels = [f["label"] for f in json.loads(capsys.readouterr().out)["files"]]
    assert labels[0] != labels[1] and all(label.startswith("mlp-2-relu w32 s1 e0 (") for label in labels)


def test_progress_lines_name_each_network(acts_factory, tmp_path: Path, capsys) -> None:
    paths = [str(acts_factory(name=f"w{w}.h5", n=100, width=w, clone_size=4)) for w in (16, 8)]
    assert main(["clones", *paths, *FAST[:-1], "--ii-points", "0", "--progress", "lines", "-o", str(tmp_path / "o")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if " phase " in line]
    networks = [line.split(" phase ")[0].split(" ", 2)[2] for line in lines[::5]]
    assert networks == ["clones planted w8 s0 e0", "clones planted w16 s0 e0"]  # measured in the tables' order
    assert [line.split(" phase ")[1].split(" ")[0] for line in lines[:5]] == ["1/5", "2/5", "3/5", "4/5", "5/5"]


def test_tables_with_an_excess_error_fit_are_not_replaced_silently(acts_factory, tmp_path: Path, capsys) -> None:
    path = acts_factory(n=200, width=16, clone_size=4)
    out = ["-o", str(tmp_path / "results")]
    assert main(["clones", str(path), *FAST, "--ii-points", "0", "--error-inf", "0.02", *out]) == 0
    fitted, _ = read_clones_summary(tmp_path / "results" / "clones-summary.parquet")
    assert len(_rows(fitted, metric="excess_error_c")) == 1
    assert main(["clones", str(path), *FAST, "--ii-points", "0", *out]) == 2  # without the fit: refused, one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "other options (error_inf)" in err[0] and "--force" in err[1], err
    assert read_clones_summary(tmp_path / "results" / "clones-summary.parquet")[0].equals(fitted)
    assert main(["clones", str(path), *FAST, "--ii-points", "0", *out, "--force"]) == 0  # replaced only when asked
    assert not len(_rows(read_clones_summary(tmp_path / "results" / "clones-summary.parquet")[0], metric="excess_error_c"))


def test_growth_of_two_widths_is_printed_with_its_caveat(acts_factory, tmp_path: Path, capsys) -> None:
    paths = [str(acts_factory(name=f"w{w}.h5", n=200, width=w, clone_size=4)) for w in (16, 32)]
    assert main(["clones", *paths, *FAST[:-1], "--ii-points", "0", "-o", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "undetermined" in err and "clones grow above" not in err
