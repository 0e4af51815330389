"""The validation layer: every option has a range and every field of every file a type, checked before any
work, so bad input is exit 2 with one line naming the option or the file and field, and nothing written.

* Options out of range, through every stage (and through a sweep, which checks every step before its first),
  `train --seeds`, `extract --model` and `import` included.
* Checkpoint fields of the wrong type or missing, through `train --resume` and `extract`.
* Activation-file attributes and values: shard attributes without their row counts, attributes of the
  wrong type or beyond 64 bits, values beyond the magnitude float32 arithmetic can hold.
* Table columns of the wrong type, through `report` and `clones --ensemble`.
* Feature dumps whose arrays do not fit together (`import`), image folders of the wrong layout (`extract --model`).
"""

from __future__ import annotations

import json
import resource
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mitosis_cli.io.tables import provenance, write_table

from .conftest import (
    TINY_CLONES,
    TINY_DATA,
    TINY_ENSEMBLE,
    TINY_TRAIN,
    RunCli,
    assert_clean_failure,
    own_extract,
    planted_acts,
    record,
    snapshot,
)

BIG = str(1 << 64)

# ------------------------------------------------------------------------------------------------ options

# (stage, extra arguments, the option the error line names)
OPTION_CASES: list[tuple[str, list[str], str]] = [
    ("train", ["--momentum", "-1"], "--momentum"),
    ("train", ["--momentum", "1"], "--momentum"),
    ("train", ["--lr", "inf"], "--lr"),
    ("train", ["--lr", "nan"], "--lr"),
    ("train", ["--weight-decay", "-0.1"], "--weight-decay"),
    ("train", ["--weight-decay", "inf"], "--weight-decay"),
    ("train", ["--lr-min", "-1e-5"], "--lr-min"),
    ("train", ["--label-smoothing", "1"], "--label-smoothing"),
    ("train", ["--seed", "-1"], "--seed"),
    ("train", ["--seed", BIG], "--seed"),
    ("train", ["--seed", str(1 << 63)], "--seed"),
    ("train", ["--train-size", "0"], "--train-size"),
    ("train", ["--train-size", "1", "--ending", "batchnorm"], "--train-size 1"),
    ("train", ["--dataset", "synthetic:n=1,test=20,d=8,latent=2,classes=2", "--ending", "batchnorm"], "training sample"),
    ("train", ["--depth", "0"], "--depth"),
    ("train", ["--epochs", "0"], "--epochs"),
    ("train", ["--epochs", BIG], "--epochs"),
    ("train", ["--max-epochs", "1"], "--max-epochs"),
    ("train", ["--batch-size", "1"], "--batch-size"),
    ("train", ["--device", "tpu"], "--device"),
    ("train", ["--width", str(10**12)], "--width"),
    ("train", ["--depth", str(10**7)], "--depth"),
    ("clones", ["--ii-k", "500"], "--ii-k"),
    ("clones", ["--ii-k", "120"], "--ii-k"),
    ("clones", ["--seed", "-1"], "--seed"),
    ("clones", ["--seed", BIG], "--seed"),
    ("clones", ["--repeats", BIG], "--repeats"),
    ("clones", ["--acc-repeats", "10000000"], "--acc-repeats"),
    ("clones", ["--error-inf", "1.5"], "--error-inf"),
    ("clones", ["--error-inf", "nan"], "--error-inf"),
    ("clones", ["--sizes", "32"], "chunk size 32"),
    ("clones", ["--device", "gpu"], "--device"),
    ("ensemble", ["--repeats", BIG], "--repeats"),
    ("ensemble", ["--seed", BIG], "--seed"),
    ("ensemble", ["--params-per-width", "inf"], "--params-per-width"),
    ("ensemble", ["--params-per-width", "-3"], "--params-per-width"),
    ("ensemble", ["--chunk-size", "16"], "--chunk-size"),
    ("extract", ["--epoch", "-2"], "--epoch"),
    ("extract", ["--split", "valid"], "--split"),
    ("extract", ["--device", "cuda:x"], "--device"),
    ("sweep", ["--train-arg=--momentum=-1"], "--momentum"),
    ("sweep", ["--clones-arg=--seed=-1"], "--seed"),
    ("train", ["--seeds", "0-10000000000000"], "--seeds"),
    ("train", ["--seeds", f"0,{BIG}"], "--seeds"),
    ("train", ["--seeds", "-1,0"], "--seeds"),
    ("train", ["--seeds", "0-5000"], "--seeds"),
    ("train", ["--seeds", "0-1", "-o", "OUT/x/{seed}/../run"], "--seeds"),
    ("train", ["--seeds", "0-1", "--acts", "OUT/a/{seed}/../acts.h5"], "--seeds"),
    ("extract --model", ["--num-classes", "0"], "--num-classes"),
    ("extract --model", ["--num-classes", BIG], "--num-classes"),
    ("extract --model", ["--image-size", "0"], "--image-size"),
    ("extract --model", ["--image-size", "100000"], "--image-size"),
    ("extract --model", ["--resize", "4"], "--resize"),
    ("extract --model", ["--mean", "0.5,0.5"], "--mean"),
    ("extract --model", ["--mean", "0.5"], "--mean"),
    ("extract --model", ["--std", "0.2,0,0.2"], "--std"),
    ("extract --model", ["--std", "inf,1,1"], "--std"),
    ("extract --model", ["--batch-size", "0"], "--batch-size"),
    ("extract --model", ["--batch-size", BIG], "--batch-size"),
    ("extract --model", ["--workers", "-1"], "--workers"),
    ("extract --model", ["--seed", "-1"], "--seed"),
    ("extract --model", ["--layer", ""], "--layer"),
    ("extract --model", ["--layer", "9"], "--layer"),
    ("import", ["--num-classes", "0"], "--num-classes"),
    ("import", ["--num-classes", BIG], "--num-classes"),
    ("import", ["--seed", "-5"], "--seed"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, own: dict[str, Path]) -> dict[str, Path]:
    from mitosis_cli.cli.app import main

    root = tmp_path_factory.mktemp("inputs")
    run = root / "run"
    assert main(["train", *TINY_TRAIN, "-o", str(run)]) == 0
    acts = [planted_acts(root / f"a{s}.h5", seed=s) for s in range(2)]
    return {**own, "run": run, "a0": acts[0], "a1": acts[1], "root": root}


def _argv(stage: str, files: dict[str, Path], out: Path) -> list[str]:
    if stage == "train":
        return ["train", *TINY_TRAIN, "-o", str(out / "run")]
    if stage == "clones":
        return ["clones", str(files["a0"]), *TINY_CLONES, "-o", str(out / "c")]
    if stage == "ensemble":
        return ["ensemble", str(files["a0"]), str(files["a1"]), *TINY_ENSEMBLE, "-o", str(out / "e.parquet")]
    if stage == "extract":
        return ["extract", str(files["run"]), "--quiet", "-o", str(out / "a.h5")]
    if stage == "extract --model":
        return own_extract(files, "-o", out / "a.h5")
    if stage == "import":
        return ["import", str(files["dump"]), "--quiet", "-o", str(out / "a.h5")]
    return ["sweep", "--dataset", TINY_DATA, "--widths", "8", "--seeds", "0,1", "--epochs", "1", "--quiet", "-o", str(out / "s")]


@pytest.mark.parametrize("stage, extra, option", OPTION_CASES, ids=[f"{c[0]} {' '.join(c[1])}"[:60] for c in OPTION_CASES])
def test_an_option_out_of_range_is_one_line_before_any_work(
        tmp_path: Path, cli: RunCli, files: dict[str, Path], stage: str, extra: list[str], option: str) -> None:
    before = snapshot(tmp_path)
    extra = [word.replace("OUT", str(tmp_path)) for word in extra]  # an output below this test's folder
    assert_clean_failure(cli(*_argv(stage, files, tmp_path), *extra), option)
    assert snapshot(tmp_path) == before and not any(tmp_path.iterdir())  # not even a folder was made
    record("validation.options")


# --------------------------------------------------------------------------------------------- checkpoints


def _edited(run: Path, changes: dict[str, object]) -> dict[str, object]:
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    for key, value in changes.items():
        if value is _DROP:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


_DROP = object()

# (what, changes to an unfinished checkpoint, the field the error line names)
RESUME_CASES: list[tuple[str, dict[str, object], str]] = [
    ("no optimizer state", {"optimizer": _DROP}, "optimizer"),
    ("optimizer state a string", {"optimizer": "adam"}, "optimizer"),
    ("optimizer without param_groups", {"optimizer": {"state": {}}}, "optimizer"),
    ("optimizer of another model", {"optimizer": {"state": {}, "param_groups": [{"params": [0], "lr": 0.1}]}}, "optimizer"),
    ("no random state", {"aug_rng": _DROP}, "aug_rng"),
    ("random state of the wrong type", {"order_rng": torch.zeros(3)}, "order_rng"),
    ("epoch a string", {"epoch": "2"}, "epoch"),
    ("epoch negative", {"epoch": -3}, "epoch"),
    ("step a float", {"step_in_epoch": 1.5}, "step_in_epoch"),
    ("history not JSON", {"history": "[{"}, "history"),
    ("history rows without epoch", {"history": json.dumps([{"train_error": 0.5}])}, "history"),
    ("no history", {"history": _DROP}, "history"),
    ("finished a string", {"finished": "no"}, "finished"),
    ("config not text", {"config": {"arch": "mlp"}}, "config"),
    ("weights a list", {"model": [1, 2]}, "model"),
    ("num_classes a string", {"num_classes": "4"}, "num_classes"),
    ("config a JSON list", {"config": "[1, 2]"}, "config"),
    ("config with a width of words", {"config": json.dumps({"arch": "mlp", "width": "wide"})}, "width"),
]


@pytest.mark.parametrize("name, changes, field", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_a_checkpoint_field_of_the_wrong_type_is_refused_on_resume(
        tmp_path: Path, cli: RunCli, files: dict[str, Path], name: str, changes: dict[str, object], field: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    torch.save(_edited(run, {"finished": False, **changes}), run / "checkpoint.pt")
    before = snapshot(tmp_path)
    assert_clean_failure(cli("train", *TINY_TRAIN, "--resume", "-o", run), run / "checkpoint.pt", problem=field)
    assert snapshot(tmp_path) == before
    record("validation.checkpoint_fields")


EXTRACT_CASES: list[tuple[str, dict[str, object], str]] = [
    ("input_shape with a zero", {"input_shape": [0]}, "input_shape"),
    ("input_shape a string", {"input_shape": "32"}, "input_shape"),
    ("num_classes zero", {"num_classes": 0}, "num_classes"),
    ("epoch a float", {"epoch": 2.0}, "epoch"),
    ("a weight that is not a tensor", {"model": {"head.weight": [0.0]}}, "model"),
    ("config width a string", {"config": json.dumps({"arch": "mlp", "width": "16", "depth": 2})}, "width"),
    ("config depth a float", {"config": json.dumps({"arch": "mlp", "width": 16, "depth": 2.5})}, "depth"),
    ("config of an unknown architecture", {"config": json.dumps({"arch": "resnet", "width": 16})}, "arch"),
    ("config not an object", {"config": json.dumps([16, 2])}, "config"),
]


@pytest.mark.parametrize("name, changes, field", EXTRACT_CASES, ids=[c[0] for c in EXTRACT_CASES])
def test_a_checkpoint_field_of_the_wrong_type_is_refused_by_extract(
        tmp_path: Path, cli: RunCli, files: dict[str, Path], name: str, changes: dict[str, object], field: str) -> None:
    bad = tmp_path / "bad.pt"
    torch.save(_edited(files["run"], changes), bad)
    before = snapshot(tmp_path)
    assert_clean_failure(cli("extract", bad, "--quiet", "-o", tmp_path / "a.h5"), bad, problem=field)
    assert snapshot(tmp_path) == before
    record("validation.checkpoint_fields")


# ---------------------------------------------------------------------------------------- activation files


def _shard(files: dict[str, Path], path: Path, **attrs: object) -> Path:
    shutil.copy(files["a1"], path)
    with h5py.File(path, "r+") as f:
        for key, value in attrs.items():
            if value is None:
                f.attrs.pop(key, None)
            else:
                f.attrs[key] = value
    return path


def _scaled(files: dict[str, Path], path: Path, name: str, scale: float, dtype: str = "float32") -> Path:
    """`name` scaled by `scale` (plus `scale` itself, so a zero array such as the planted bias grows too)."""
    shutil.copy(files["a1"], path)
    with h5py.File(path, "r+") as f:
        data = (f[name][...].astype(np.float64) + 1.0) * scale
        del f[name]
        f.create_dataset(name, data=data.astype(dtype))
    return path


ROWS = json.dumps({"train": [0, 160, 160], "test": [0, 160, 160]})
# (what, how the file is made, the word the error line holds); each through merge (beside a good shard) or clones
HEADER_CASES: list[tuple[str, Callable[[dict[str, Path], Path], Path], str]] = [
    ("a shard without its row counts", lambda f, p: _shard(f, p, shard="0/1"), "shard_rows"),
    ("a shard whose row counts lack a split", lambda f, p: _shard(f, p, shard="0/1", shard_rows=json.dumps(
        {"train": [0, 160, 160]})), "shard_rows"),
    ("a shard whose rows do not match the file", lambda f, p: _shard(f, p, shard="0/1", shard_rows=json.dumps(
        {"train": [0, 100, 160], "test": [0, 160, 160]})), "shard_rows"),
    ("shard rows negative", lambda f, p: _shard(f, p, shard="0/1", shard_rows=json.dumps(
        {"train": [-160, 0, 160], "test": [0, 160, 160]})), "shard_rows"),
    ("shard 1/0", lambda f, p: _shard(f, p, shard="1/0", shard_rows=ROWS), "shard"),
    ("shard not K/N", lambda f, p: _shard(f, p, shard="first", shard_rows=ROWS), "shard"),
    ("seed beyond 64 bits", lambda f, p: _shard(f, p, seed=np.uint64(1 << 63)), "seed"),
    ("width a boolean", lambda f, p: _shard(f, p, width=True), "width"),
    ("epoch a float", lambda f, p: _shard(f, p, epoch=1.5), "epoch"),
]
# values: through clones (merge refuses these files earlier: they are not shards)
VALUE_CASES: list[tuple[str, Callable[[dict[str, Path], Path], Path], str]] = [
    ("features of magnitude 1e20", lambda f, p: _scaled(f, p, "test/features", 1e20), "magnitude"),
    ("float64 features beyond float32", lambda f, p: _scaled(f, p, "train/features", 1e300, "float64"), "magnitude"),
    ("float64 head beyond float32", lambda f, p: _scaled(f, p, "head/weight", 1e300, "float64"), "magnitude"),
    ("head bias of magnitude 1e16", lambda f, p: _scaled(f, p, "head/bias", 1e16), "magnitude"),
]


def _acts_cases() -> list[tuple[str, str, Callable[[dict[str, Path], Path], Path], str]]:
    return ([(command, *case) for case in HEADER_CASES for command in ("merge", "clones")]
            + [("clones", *case) for case in VALUE_CASES])


@pytest.mark.parametrize("command, name, make, problem", _acts_cases(), ids=[f"{c[0]}: {c[1]}" for c in _acts_cases()])
def test_an_activation_attribute_or_value_out_of_range_is_refused(
        tmp_path: Path, cli: RunCli, files: dict[str, Path], command: str, name: str,
        make: Callable[[dict[str, Path], Path], Path], problem: str) -> None:
    bad = make(files, tmp_path / "bad.h5")
    before = snapshot(tmp_path)
    if command == "merge":
        result = cli("merge", bad, "--quiet", "-o", tmp_path / "m.h5")
    else:
        result = cli("clones", bad, *TINY_CLONES, "-o", tmp_path / "c")
    assert_clean_failure(result, bad, problem=problem)
    assert snapshot(tmp_path) == before
    record("validation.activation_fields")


def test_huge_logits_are_refused_by_ensemble(tmp_path: Path, cli: RunCli, files: dict[str, Path]) -> None:
    for i, (name, scale, dtype) in enumerate((("test/logits", 1e300, "float64"), ("train/logits", 1e18, "float32"))):
        bad = _scaled(files, tmp_path / f"bad{i}.h5", name, scale, dtype)
        before = snapshot(tmp_path)
        result = cli("ensemble", files["a0"], bad, *TINY_ENSEMBLE, "-o", tmp_path / "e.parquet")
        assert_clean_failure(result, bad, problem="magnitude")
        assert snapshot(tmp_path) == before
        record("validation.activation_fields")


# ---------------------------------------------------------------------------------------------- tables


# -------------------------------------------------------------------------------- feature dumps, image folders


def _dump(**changes: object) -> Callable[[Path], Path]:
    """A small dump (.npz) with `changes` to its arrays (None: the key left out)."""
    def make(path: Path) -> Path:
        rng = np.random.default_rng(0)
        arrays: dict[str, object] = {"train_features": rng.normal(size=(30, 6)).astype(np.float32),
                                     "train_labels": rng.integers(0, 3, 30), "head_weight": rng.normal(size=(3, 6)),
                                     "head_bias": np.zeros(3), "test_features": rng.normal(size=(20, 6)).astype(np.float32),
                                     "test_labels": rng.integers(0, 3, 20)}
        arrays.update(changes)
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
        return path
    return make


_BIG_VALUES = np.full((30, 6), 1e20, np.float32)
# (what, the dump, the word the error line holds)
DUMP_CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("labels shorter than the features", _dump(train_labels=np.zeros(29, np.int64)), "train_labels"),
    ("test features of another width", _dump(test_features=np.zeros((20, 5), np.float32)), "test_features"),
    ("a head of another width", _dump(head_weight=np.zeros((3, 7))), "head_weight"),
    ("a head bias of another length", _dump(head_bias=np.zeros(4)), "head_bias"),
    ("a head weight without its bias", _dump(head_bias=None), "head_bias"),
    ("logits of another number of rows", _dump(head_weight=None, head_bias=None, train_logits=np.zeros((29, 3)),
                                               test_logits=np.zeros((20, 3))), "train_logits"),
    ("features in three dimensions", _dump(train_features=np.zeros((30, 2, 3), np.float32)), "train_features"),
    ("labels as floats", _dump(train_labels=np.zeros(30)), "train_labels"),
    ("a label beyond the head's classes", _dump(test_labels=np.full(20, 3)), "outside"),
    ("a label of 2^40 without a head", _dump(head_weight=None, head_bias=None, test_labels=np.full(20, 1 << 40)), "classes"),
    ("class names of another count", _dump(class_names=np.array(["a", "b"])), "class_names"),
    ("Python objects (a pickle)", _dump(train_labels=np.array([{"label": 1}] * 30, dtype=object)), "objects"),
    ("features of magnitude 1e20", _dump(train_features=_BIG_VALUES), "magnitude"),
]


@pytest.mark.parametrize("name, make, problem", DUMP_CASES, ids=[c[0] for c in DUMP_CASES])
def test_a_feature_dump_whose_arrays_do_not_fit_is_refused_by_import(
        tmp_path: Path, cli: RunCli, name: str, make: Callable[[Path], Path], problem: str) -> None:
    bad = make(tmp_path / "bad.npz")
    before = snapshot(tmp_path)
    assert_clean_failure(cli("import", bad, "--quiet", "-o", tmp_path / "a.h5"), bad, problem=problem)
    assert snapshot(tmp_path) == before
    record("validation.dump_arrays")


def _images(files: dict[str, Path], tmp: Path, change: Callable[[Path], Path]) -> tuple[Path, Path]:
    """A copy of the image folder with `change` made to it; (the folder, the path the error names)."""
    images = shutil.copytree(files["images"], tmp / "images")
    return images, change(images)


def _renamed(images: Path, split: str, name: str) -> Path:
    (images / split).rename(images / name)
    return images


def _flat(images: Path) -> Path:
    """train/ holds the images themselves, without class folders."""
    for path in (images / "train").rglob("*.png"):
        path.rename(images / "train" / f"{path.parent.name}-{path.name}")
    for folder in (images / "train").iterdir():
        if folder.is_dir():
            folder.rmdir()
    return images / "train"


def _emptied(images: Path) -> Path:
    for path in (images / "test").rglob("*.png"):
        path.unlink()
    return images / "test"


def _broken_link(images: Path) -> Path:
    (images / "train" / "ant" / "gone.png").symlink_to(images / "nowhere.png")
    return images / "train" / "ant" / "gone.png"


def _third_class(images: Path) -> Path:
    shutil.copytree(images / "test" / "bee", images / "test" / "cat")
    return images


# (what, the change to the image folder, the word the error line holds)
IMAGE_CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("neither train/ nor test/", lambda i: _renamed(_renamed(i, "train", "valid"), "test", "holdout"), "no train/ or test/"),
    ("a split without class folders", _flat, "no class folders"),
    ("class folders without images", _emptied, "no images"),
    ("a link to an image that is gone", _broken_link, "cannot read"),
    ("three classes for a head of two", _third_class, "classes"),
]


@pytest.mark.parametrize("name, change, problem", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_an_image_folder_of_the_wrong_layout_is_refused_by_extract(
        tmp_path: Path, cli: RunCli, files: dict[str, Path], name: str, change: Callable[[Path], Path], problem: str) -> None:
    images, named = _images(files, tmp_path, change)
    before = snapshot(tmp_path)
    result = cli(*own_extract({**files, "images": images}, "-o", tmp_path / "a.h5"))
    assert_clean_failure(result, named if problem != "classes" else "classes", problem=problem)
    assert snapshot(tmp_path) == before
    record("validation.image_folders")


def _table(path: Path, kind: str, columns: dict[str, pa.Array]) -> Path:
    write_table(path, pa.table(columns), provenance(kind, [], {}, ""))
    return path


def _from(made: Path, path: Path, column: str, values: Callable[[pa.Array], pa.Array]) -> Path:
    table = pq.read_table(made)
    index = table.column_names.index(column)
    table = table.set_column(index, column, values(table[column].combine_chunks()))
    meta = json.loads(table.schema.metadata[b"mitosis"])
    write_table(path, table.replace_schema_metadata({}), meta)
    return path


def _as_text(array: pa.Array) -> pa.Array:
    return pa.array([str(v) for v in array.to_pylist()], pa.string())


def _infinite(array: pa.Array) -> pa.Array:
    values = [None if v is None else float(v) for v in array.to_pylist()]
    values[0] = float("inf")
    return pa.array(values, pa.float64())


def _as_float(array: pa.Array) -> pa.Array:
    return pa.array([None if v is None else float(v) for v in array.to_pylist()], pa.float64())


@pytest.fixture(scope="module")
def tables(files: dict[str, Path]) -> dict[str, Path]:
    from mitosis_cli.cli.app import main

    root = files["root"]
    assert main(["clones", str(files["a0"]), *TINY_CLONES, "-o", str(root / "c")]) == 0
    assert main(["ensemble", str(files["a0"]), str(files["a1"]), *TINY_ENSEMBLE, "-o", str(root / "e.parquet")]) == 0
    return {"clones": root / "c" / "clones.parquet", "clones-summary": root / "c" / "clones-summary.parquet",
            "ensemble": root / "e.parquet", "history": files["run"] / "history.parquet"}


# (what, table kind, column, how its values change)
COLUMN_CASES: list[tuple[str, str, str, Callable[[pa.Array], pa.Array]]] = [
    ("clones values as words", "clones", "value", _as_text),
    ("clones chunk sizes as floats", "clones", "chunk_size", _as_float),
    ("clones widths as words", "clones", "width", _as_text),
    ("summary means as words", "clones-summary", "mean", _as_text),
    ("summary metric names as numbers", "clones-summary", "n", _as_text),
    ("ensemble values as words", "ensemble", "value", _as_text),
    ("ensemble members as floats", "ensemble", "members", _as_float),
    ("history errors as words", "history", "train_error", _as_text),
    ("history epochs as floats", "history", "epoch", _as_float),
    ("clones values infinite", "clones", "value", _infinite),
    ("summary sem infinite", "clones-summary", "sem", _infinite),
]


@pytest.mark.parametrize("name, kind, column, change", COLUMN_CASES, ids=[c[0] for c in COLUMN_CASES])
def test_a_table_column_of_the_wrong_type_is_refused_by_report(
        tmp_path: Path, cli: RunCli, tables: dict[str, Path], name: str, kind: str, column: str,
        change: Callable[[pa.Array], pa.Array]) -> None:
    bad = _from(tables[kind], tmp_path / "bad.parquet", column, change)
    before = snapshot(tmp_path)
    assert_clean_failure(cli("report", bad, "--quiet", "-o", tmp_path / "r"), bad, problem=f"column {column!r}")
    assert snapshot(tmp_path) == before and not (tmp_path / "r").exists()
    record("validation.table_columns")


def _with_meta(made: Path, path: Path, change: Callable[[dict[str, object]], None]) -> Path:
    table = pq.read_table(made)
    meta = json.loads(table.schema.metadata[b"mitosis"])
    change(meta)
    pq.write_table(table.replace_schema_metadata({b"mitosis": json.dumps(meta).encode()}), path)
    return path


METADATA_CASES: list[tuple[str, str, Callable[[dict[str, object]], None], str]] = [
    ("options a list", "clones", lambda m: m.update(options=[1, 2]), "options"),
    ("inputs an object", "ensemble", lambda m: m.update(inputs={"a": 1}), "inputs"),
    ("history config a list", "history", lambda m: m["options"].update(config=[16]), "config"),  # type: ignore[union-attr]
    ("history width of words", "history", lambda m: m["options"]["config"].update(width="wide"), "width"),  # type: ignore[index]
]


@pytest.mark.parametrize("name, kind, change, problem", METADATA_CASES, ids=[c[0] for c in METADATA_CASES])
def test_table_metadata_of_the_wrong_shape_is_refused_by_report(
        tmp_path: Path, cli: RunCli, tables: dict[str, Path], name: str, kind: str,
        change: Callable[[dict[str, object]], None], problem: str) -> None:
    bad = _with_meta(tables[kind], tmp_path / "bad.parquet", change)
    before = snapshot(tmp_path)
    assert_clean_failure(cli("report", bad, "--quiet", "-o", tmp_path / "r"), bad, problem=problem)
    assert snapshot(tmp_path) == before
    record("validation.table_metadata")


def test_a_member_config_of_other_types_is_measured_without_the_parameter_count(
        tmp_path: Path, cli: RunCli, files: dict[str, Path]) -> None:
    """The activation file's config is free-form: a width of words only means the parameter count is unknown."""
    members = []
    for i in range(2):
        member = shutil.copy(files[f"a{i}"], tmp_path / f"m{i}.h5")
        with h5py.File(member, "r+") as f:
            f.attrs["config"] = json.dumps({"arch": "mlp", "dataset": "mnist5k", "width": "wide", "depth": 2})
        members.append(member)
    result = cli("ensemble", *members, "--repeats", "2", "-o", tmp_path / "e.parquet", "--json")
    assert result.code == 0, result.err
    assert any("same-params skipped" in note for note in json.loads(result.out)["notes"])
    record("validation.accepted")


def test_a_width_beyond_this_machines_memory_is_one_line(tmp_path: Path, cli: RunCli) -> None:
    """Within the range but beyond the memory: torch's allocator refuses, one line, exit 1 (not "unexpected").

    An address-space limit 8 GiB above what this process maps makes the refusal of the 4 TiB layer certain: a
    kernel that grants any allocation (overcommit_memory = 1) would otherwise have the process killed instead.
    """
    mapped = int(next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmSize:"))
                 .split()[1]) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + (8 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        result = cli("train", "--dataset", TINY_DATA, "--width", str(1 << 20), "--epochs", "1", "--quiet",
                     "-o", tmp_path / "run")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert_clean_failure(result, "", code=1, problem="out of memory")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    record("validation.out_of_memory")


def test_an_error_inf_table_of_the_wrong_types_is_refused_by_clones(tmp_path: Path, cli: RunCli, files: dict[str, Path]) -> None:
    for i, (column, values) in enumerate((("value", pa.array(["0.1"])), ("split", pa.array([1], pa.int64())))):
        columns = {"kind": pa.array(["error-inf"]), "width": pa.array([16], pa.int64()), "members": pa.array([2], pa.int64()),
                   "repeat": pa.array([0], pa.int64()), "split": pa.array(["test"]), "metric": pa.array(["error"]),
                   "value": pa.array([0.1])}
        bad = _table(tmp_path / f"e{i}.parquet", "ensemble", {**columns, column: values})
        before = snapshot(tmp_path)
        assert_clean_failure(cli("clones", files["a0"], "--ensemble", bad, *TINY_CLONES, "-o", tmp_path / "c"), bad,
                             problem=column)
        assert snapshot(tmp_path) == before
        record("validation.table_columns")
