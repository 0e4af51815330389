"""Your own network, end to end through the real entry point: `extract --model` (torchvision and a module factory)
on an image folder, and `import` from .npz and .pt; features checked against the model's own layer computed here."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from mitosis_cli.cli.app import main

CLASSES = ("cat", "dog", "emu")  # folder names; labels are their sorted order
PER_CLASS = {"train": 3, "test": 2}
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIR/{train,test}/{cat,dog,emu}/*.png: 36x36 random RGB images (one greyscale), written in shuffled class order."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in PER_CLASS.items():
        for name in ("emu", "cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)
                Image.fromarray(pixels[..., 0] if (split, name, i) == ("test", "dog", 1) else pixels).save(folder / f"{i}.png")
    return root


def reference_inputs(root: Path, split: str) -> tuple[torch.Tensor, np.ndarray]:
    """The inputs as the ImageNet evaluation transform makes them, by hand: 36x36 -> shorter side 36 (unchanged)
    -> centre crop 32 (2 pixels off each side) -> [0, 1] -> (x - mean) / std; labels from the sorted class names."""
    xs, ys = [], []
    for label, name in enumerate(sorted(CLASSES)):
        for path in sorted((root / split / name).glob("*.png")):
            pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)[2:34, 2:34] / 255.0
            xs.append(((pixels - MEAN) / STD).transpose(2, 0, 1))
            ys.append(label)
    return torch.tensor(np.stack(xs), dtype=torch.float32), np.array(ys)


def resnet_penultimate(model: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    """ResNet's pooled last hidden layer, step by step (no hook)."""
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        h = model.layer4(model.layer3(model.layer2(model.layer1(h))))
        return torch.flatten(model.avgpool(h), 1)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[torchvision.models.ResNet, Path]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so eval mode matters
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)  # as DDP saves
    return model.eval(), path


def test_torchvision_resnet18_features_are_its_pooled_penultimate_layer(
        tmp_path: Path, images: Path, resnet: tuple[torchvision.models.ResNet, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, weights = resnet
    out = tmp_path / "acts.h5"
    argv = ["extract", "--model", "torchvision:resnet18", "--weights", str(weights), "--images", str(images),
            "--num-classes", "3", "--image-size", "32", "--resize", "36", "--batch-size", "4", "--seed", "7", "-o", str(out),
            "--threads", "1"]
    code, err = run(argv, capsys)
    assert code == 0, err
    with h5py.File(out) as f:
        attrs = dict(f.attrs)
        assert attrs["layer"] == "input of fc (the classification head)" and attrs["arch"] == "resnet18"
        assert json.loads(attrs["class_names"]) == sorted(CLASSES) and attrs["seed"] == 7 and attrs["dataset"] == images.name
        assert attrs["source_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
        np.testing.assert_array_equal(f["head/weight"][...], model.fc.weight.detach().numpy())
        np.testing.assert_array_equal(f["head/bias"][...], model.fc.bias.detach().numpy())
        for split in ("train", "test"):
            x, labels = reference_inputs(images, split)
            expected = resnet_penultimate(model, x).numpy()
            assert f[f"{split}/features"].shape == (len(labels), 512)
            np.testing.assert_allclose(f[f"{split}/features"][...], expected, rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(f[f"{split}/labels"][...], labels)
            with torch.no_grad():
                np.testing.assert_allclose(f[f"{split}/logits"][...], model(x).numpy(), rtol=1e-4, atol=1e-5)
    # the same extraction again is current (the stamp: weights, options, the folder's names and sizes) ...
    code, err = run(argv, capsys)
    assert code == 0 and "skipped" in err
    # ... and one more image is another input: refused, the file kept
    Image.fromarray(np.zeros((36, 36, 3), np.uint8)).save(images / "test" / "cat" / "extra.png")
    try:
        code, err = run(argv, capsys)
        assert code == 2 and "other options (config)" in err
    finally:
        (images / "test" / "cat" / "extra.png").unlink()


FACTORY = '''
from torch import nn

def build(num_classes=10):
    """A small CNN whose last hidden layer (16 pooled channels) feeds a linear head."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, num_classes))
'''


def test_module_factory_features_and_head(tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "small.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mynets.small", raising=False)
    from mynets.small import build  # the test's own copy of the network

    torch.manual_seed(1)
    model = build(num_classes=3).eval()
    weights = tmp_path / "small.pt"
    torch.save({"model": model.state_dict()}, weights)
    out = tmp_path / "acts.h5"
    code, err = run(["extract", "--model", "module:mynets.small:build", "--weights", str(weights), "--images", str(images),
                     "--num-classes", "3", "--image-size", "32", "--resize", "36", "--split", "test", "-o", str(out),
                     "--threads", "1"], capsys)
    assert code == 0, err
    x, labels = reference_inputs(images, "test")
    with torch.no_grad():
        expected = model[:7](x).numpy()  # the input of the last Linear: after the hidden Linear's ReLU
    with h5py.File(out) as f:
        assert list(f) == ["head", "test"] and f.attrs["arch"] == "mynets.small:build"
        assert f.attrs["layer"] == "input of 7 (the classification head)"
        np.testing.assert_allclose(f["test/features"][...], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(f["test/labels"][...], labels)
        np.testing.assert_array_equal(f["head/weight"][...], model[7].weight.detach().numpy())
        config = json.loads(f.attrs["config"])
    assert config["factory_sha256"] == hashlib.sha256((package / "small.py").read_bytes()).hexdigest()


def _arrays(rng: np.random.Generator, width: int = 12, classes: int = 4) -> dict[str, np.ndarray]:
    return {"train_features": rng.standard_normal((40, width)).astype(np.float32), "train_labels": rng.integers(0, classes, 40),
            "test_features": rng.standard_normal((25, width)).astype(np.float32), "test_labels": rng.integers(0, classes, 25),
            "head_weight": rng.standard_normal((classes, width)).astype(np.float32),
            "head_bias": rng.standard_normal(classes).astype(np.float32)}


@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_import_npz_and_pt(tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    arrays = _arrays(np.random.default_rng(3))
    source = tmp_path / f"features.{fmt}"
    if fmt == "npz":
        np.savez_compressed(source, **arrays, class_names=np.array(["a", "b", "c", "d"]))
    else:
        torch.save({**{k: torch.from_numpy(v) for k, v in arrays.items()}, "class_names": ["a", "b", "c", "d"]}, source)
    code, err = run(["import", str(source), "--arch", "resnet50", "--dataset", "imagenet-val", "--seed", "2", "--json"], capsys)
    assert code == 0, err
    out = source.with_suffix(".h5")
    with h5py.File(out) as f:
        assert (f.attrs["arch"], f.attrs["dataset"], f.attrs["seed"]) == ("resnet50", "imagenet-val", 2)
        assert json.loads(f.attrs["class_names"]) == ["a", "b", "c", "d"]
        np.testing.assert_array_equal(f["head/weight"][...], arrays["head_weight"])
        np.testing.assert_array_equal(f["head/bias"][...], arrays["head_bias"])
        for split in ("train", "test"):
            feats = arrays[f"{split}_features"]
            np.testing.assert_array_equal(f[f"{split}/features"][...], feats)
            np.testing.assert_array_equal(f[f"{split}/labels"][...], arrays[f"{split}_labels"])
            logits = feats.astype(np.float64) @ arrays["head_weight"].T.astype(np.float64) + arrays["head_bias"]
            np.testing.assert_allclose(f[f"{split}/logits"][...], logits, rtol=1e-5, atol=1e-5)


def test_import_without_head_writes_a_headless_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arrays = _arrays(np.random.default_rng(4))
    source = tmp_path / "dump"
    source.mkdir()
    for key in ("train_features", "train_labels", "test_features", "test_labels"):
        np.save(source / f"r50.{key}.npy", arrays[key])
    code, err = run(["import", str(source / "r50.test_labels.npy"), "-o", str(tmp_path / "a.h5"), "--num-classes", "6"], capsys)
    assert code == 0, err
    with h5py.File(tmp_path / "a.h5") as f:
        assert sorted(f) == ["test", "train"] and "logits" not in f["train"] and f.attrs["num_classes"] == 6
        np.testing.assert_array_equal(f["test/features"][...], arrays["test_features"])


def _pickle_payload(path: Path) -> None:
    torch.save({"state_dict": {"fc.weight": torch.zeros(3, 512)}, "hook": os.getcwd}, path)  # a function: code on load


@pytest.mark.parametrize("case", ["other-architecture", "other-classes", "pickle", "no-classes", "broken-image",
                                  "broken-image-in-shard", "npz-shapes", "npz-pickle"])
def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, images: Path, resnet: tuple[torchvision.models.ResNet, Path],
                                         capsys: pytest.CaptureFixture[str], case: str) -> None:
    _, weights = resnet
    out = tmp_path / "acts.h5"
    extract = ["extract", "--model", "torchvision:resnet18", "--weights", str(weights), "--images", str(images),
               "--num-classes", "3", "--image-size", "32", "-o", str(out)]
    if case == "other-architecture":
        argv = [*extract[:2], "torchvision:mobilenet_v3_small", *extract[3:]]
        message = "does not fit torchvision:mobilenet_v3_small"
    elif case == "other-classes":
        argv, message = [a if a != "3" else "5" for a in extract], "another shape, e.g. fc.weight is [3, 512]"
    elif case == "pickle":
        _pickle_payload(tmp_path / "evil.pt")
        argv, message = [*extract[:4], str(tmp_path / "evil.pt"), *extract[5:]], "refused: the weights file holds objects"
    elif case == "no-classes":
        (tmp_path / "flat" / "train").mkdir(parents=True)
        (tmp_path / "flat" / "train" / "0.png").write_bytes((images / "train" / "cat" / "0.png").read_bytes())
        argv, message = [*extract[:6], str(tmp_path / "flat"), *extract[7:]], "no class folders"
    elif case.startswith("broken-image"):  # test/dog/1.png is row 3 of 6, the first of shard 1/2
        shutil.copytree(images, tmp_path / "imgs")
        (tmp_path / "imgs" / "test" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        shard = ["--shard", "1/2"] if case.endswith("shard") else []
        argv, message = [*extract[:6], str(tmp_path / "imgs"), *extract[7:], *shard], "test/dog/1.png: not a readable image"
    elif case == "npz-shapes":
        arrays = _arrays(np.random.default_rng(5))
        np.savez(tmp_path / "bad.npz", **{**arrays, "test_labels": arrays["test_labels"][:-1]})
        argv, message = ["import", str(tmp_path / "bad.npz"), "-o", str(out)], "test_labels has shape (24,), expected (25,)"
    else:
        arrays = _arrays(np.random.default_rng(6))
        np.savez(tmp_path / "bad.npz", **{**arrays, "class_names": np.array([object()] * 4)})
        argv, message = ["import", str(tmp_path / "bad.npz"), "-o", str(out)], "holds Python objects"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = run(argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("mitosis: error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temporary left
