"""Feature dumps of other tools (.npz, .npy, .pt, .safetensors): every format reads back the arrays written,
in row blocks; the keys, kinds and shapes are checked against each other with one line each."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mitosis_cli.errors import InputError
from mitosis_cli.io.feature_dumps import FeatureDump, check_dump, open_dump


def _arrays(seed: int = 0, n: int = 37, width: int = 6, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"train_features": rng.standard_normal((n, width)).astype(np.float32), "train_labels": rng.integers(0, classes, n),
            "test_features": rng.standard_normal((n // 2, width)).astype(np.float32),
            "test_labels": rng.integers(0, classes, n // 2).astype(np.int32),
            "head_weight": rng.standard_normal((classes, width)).astype(np.float32),
            "head_bias": rng.standard_normal(classes).astype(np.float32), "class_names": np.array(["x", "y", "z"])}


def _npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path.with_suffix(".npz"), **arrays)
    return path.with_suffix(".npz")


def _npz_compressed(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez_compressed(path.with_suffix(".npz"), **arrays)
    return path.with_suffix(".npz")


def _npy(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    for key, value in arrays.items():
        np.save(path.parent / f"net7_{key}.npy", value)
    np.save(path.parent / "other_train_features.npy", np.zeros((2, 2)))  # another dump in the same folder: not read
    return path.parent / "net7_head_bias.npy"


def _pt(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    payload: dict[str, object] = {k: torch.from_numpy(v) for k, v in arrays.items() if k != "class_names"}
    torch.save(payload | {"class_names": [str(n) for n in arrays["class_names"]]}, path.with_suffix(".pt"))
    return path.with_suffix(".pt")


def _safetensors(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items() if k != "class_names"}
    names = json.dumps([str(n) for n in arrays["class_names"]])
    save_file(tensors, path.with_suffix(".safetensors"), metadata={"class_names": names})
    return path.with_suffix(".safetensors")


WRITERS: dict[str, Callable[[Path, dict[str, np.ndarray]], Path]] = {
    "npz": _npz, "npz-compressed": _npz_compressed, "npy": _npy, "pt": _pt, "safetensors": _safetensors}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_format_reads_back_in_blocks(tmp_path: Path, fmt: str) -> None:
    arrays = _arrays()
    dump = open_dump(WRITERS[fmt](tmp_path / "dump", arrays))
    layout = check_dump(dump)
    assert layout.rows == {"train": 37, "test": 18} and (layout.width, layout.num_classes) == (6, 3)
    assert layout.has_head and layout.has_logits and layout.class_names == ("x", "y", "z")
    for key in ("train_features", "test_features", "head_weight"):
        blocks = list(dump.blocks(key, rows=5))
        assert [len(b) for b in blocks][:2] == [5, 5] or key == "head_weight"
        np.testing.assert_array_equal(np.concatenate(blocks), arrays[key])
    np.testing.assert_array_equal(layout.labels["test"], arrays["test_labels"])
    assert len(dump.files) == (7 if fmt == "npy" else 1) and len(dump.sha256()) == 64


def test_pt_bfloat16_features_are_widened(tmp_path: Path) -> None:
    arrays = _arrays()
    features = torch.from_numpy(arrays["train_features"]).to(torch.bfloat16)
    torch.save({"train_features": features, "train_labels": torch.from_numpy(arrays["train_labels"])}, tmp_path / "f.pt")
    dump = open_dump(tmp_path / "f.pt")
    assert not check_dump(dump).has_head
    np.testing.assert_array_equal(np.concatenate(list(dump.blocks("train_features", 8))), features.float().numpy())


def test_fortran_ordered_npz_members_still_read(tmp_path: Path) -> None:
    arrays = _arrays()
    np.savez(tmp_path / "f.npz", train_features=np.asfortranarray(arrays["train_features"]), train_labels=arrays["train_labels"])
    dump = open_dump(tmp_path / "f.npz")
    np.testing.assert_array_equal(np.concatenate(list(dump.blocks("train_features", 4))), arrays["train_features"])


def _drop(*keys: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    return lambda a: {k: v for k, v in a.items() if k not in keys}


def _set(key: str, value: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    return lambda a: {**a, key: value(a[key])}


@pytest.mark.parametrize("edit, message", [
    (_set("train_labels", lambda v: v[:-1]), "train_labels has shape \\(36,\\), expected \\(37,\\)"),
    (_set("test_features", lambda v: v[:, :-1]), "test_features has shape \\(18, 5\\), expected \\(N, 6\\)"),
    (_set("head_weight", lambda v: v[:, :-1]), "head_weight has shape \\(3, 5\\), expected \\(N, 6\\)"),
    (_set("head_bias", lambda v: v[:-1]), "head_bias has shape \\(2,\\), expected \\(3,\\)"),
    (_set("train_labels", lambda v: v.astype(np.float32)), "train_labels has dtype float32, expected integer"),
    (_set("train_features", lambda v: v.astype(np.int64)), "train_features has dtype int64, expected floating point"),
    (_set("train_labels", lambda v: v + 3), "train_labels outside \\[0, 3\\)"),
    (_set("class_names", lambda v: v[:2]), "class_names has shape \\(2,\\), expected \\(3,\\)"),
    (_set("train_features", lambda v: v[:1]), "train_features has 1 rows"),
    (_drop("head_bias"), "head_weight and head_bias together"),
    (_drop("train_labels"), "train has no train_labels"),
    (_drop("train_features", "test_features", "train_labels", "test_labels"), "no train_features or test_features"),
    (lambda a: {**a, "train_logits": np.zeros((37, 3), np.float32)}, "train_logits but no test_logits"),
    (lambda a: {**a, "train_feature": a["train_features"]}, "unknown key 'train_feature'"),
])
def test_inconsistent_dumps_are_refused_with_one_line(tmp_path: Path, edit: Callable[..., dict[str, np.ndarray]],
                                                      message: str) -> None:
    with pytest.raises(InputError, match=message) as err:
        check_dump(open_dump(_npz(tmp_path / "d", edit(_arrays()))))
    assert "\n" not in str(err.value)


def test_classes_without_a_head(tmp_path: Path) -> None:
    arrays = _drop("head_weight", "head_bias", "class_names")(_arrays())
    arrays["train_labels"] = np.array([0, 4] * 18 + [1])
    dump: FeatureDump = open_dump(_npz(tmp_path / "d", arrays))
    assert check_dump(dump).num_classes == 5  # the largest label + 1
    assert check_dump(dump, num_classes=9).num_classes == 9
    with pytest.raises(InputError, match="outside \\[0, 4\\)"):
        check_dump(dump, num_classes=4)
    logits = {**arrays, "train_logits": np.zeros((37, 7), np.float32), "test_logits": np.zeros((18, 7), np.float32)}
    layout = check_dump(open_dump(_npz(tmp_path / "l", logits)))
    assert (layout.num_classes, layout.has_head, layout.has_logits) == (7, False, True)


@pytest.mark.parametrize("name, payload, message", [
    ("d.npz", lambda p: np.savez(p, train_features=np.array([object()] * 2)), "holds Python objects"),
    ("d.npz", lambda p: p.write_bytes(b"PK\x03\x04 not a zip"), "not a readable .npz"),
    ("d.pt", lambda p: torch.save({"train_features": torch.zeros(2, 2), "f": np.sum}, p), "refused: the feature file holds"),
    ("d.pt", lambda p: torch.save([torch.zeros(2)], p), "expected a dict of tensors"),
    ("d.safetensors", lambda p: p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json"), "not a readable .safetensors"),
    ("x_features.npy", lambda p: np.save(p, np.zeros(2)), "must be named \\[PREFIX\\]KEY.npy"),
    ("train_features.npy", lambda p: np.save(p, np.array([object()] * 2)), "holds Python objects"),
    ("d.csv", lambda p: p.write_text("1,2"), "unknown format '.csv'"),
])
def test_unreadable_or_unsafe_files(tmp_path: Path, name: str, payload: Callable[[Path], object], message: str) -> None:
    payload(tmp_path / name)
    with pytest.raises(InputError, match=message):
        open_dump(tmp_path / name)


def test_a_truncated_npy_is_named_when_its_rows_run_out(tmp_path: Path) -> None:
    arrays = _arrays()
    np.save(tmp_path / "train_features.npy", arrays["train_features"])
    np.save(tmp_path / "train_labels.npy", arrays["train_labels"])
    data = (tmp_path / "train_features.npy").read_bytes()
    (tmp_path / "train_features.npy").write_bytes(data[: len(data) - 100])
    dump = open_dump(tmp_path)
    assert check_dump(dump).rows == {"train": 37}  # the header still says 37 rows
    with pytest.raises(InputError, match="truncated"):
        list(dump.blocks("train_features", 8))
