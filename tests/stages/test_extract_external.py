"""`run_extract` with `model`: a registered data set, shards, another layer, --no-strict, progress events."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mitosis_cli.data import load_dataset
from mitosis_cli.errors import InputError
from mitosis_cli.io.activation_arrays import read_activations
from mitosis_cli.stages.base import Progress
from mitosis_cli.stages.extract import ExtractSettings, MergeSettings, run_extract, run_merge

FACTORY = '''
from torch import nn

def mlp(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 24), nn.Tanh(), nn.Linear(24, num_classes))
'''


@pytest.fixture
def mlp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[nn.Sequential, Path]:
    (tmp_path / "digits_net.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)  # `module:` imports from the current folder, as `python -m` would
    monkeypatch.delitem(sys.modules, "digits_net", raising=False)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 24), nn.Tanh(), nn.Linear(24, 10)).eval()
    torch.save(model.state_dict(), tmp_path / "mlp.pt")
    return model, tmp_path / "mlp.pt"


def test_registered_data_set_in_shards_equals_one_extraction(tmp_path: Path, mlp: tuple[nn.Sequential, Path]) -> None:
    model, weights = mlp
    base = ExtractSettings(model="module:digits_net:mlp", weights=weights, dataset="mnist5k", threads=1, batch_size=512)
    events: list[Progress] = []
    whole = run_extract(ExtractSettings(**{**base.__dict__, "out": tmp_path / "all.h5"}), events.append)
    assert whole.width == 24 and whole.layer == "input of 5 (the classification head)" and not whole.notes
    assert [(e.done, e.total) for e in events if e.task == "extract test"][-1] == (1000, 1000)
    data = load_dataset("mnist5k")
    acts = read_activations(tmp_path / "all.h5")
    with torch.no_grad():
        np.testing.assert_allclose(acts.features("train"), model[:5](data.train_x).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(acts.logits("test"), model(data.test_x).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(acts.labels("test"), data.test_y.numpy())
    assert acts.header.dataset == "mnist5k" and acts.header.num_classes == 10
    parts = [run_extract(ExtractSettings(**{**base.__dict__, "out": tmp_path / f"p{k}.h5", "shard": (k, 3)})).acts
             for k in range(3)]
    merged = run_merge(MergeSettings(parts=tuple(parts), out=tmp_path / "merged.h5"))
    again = read_activations(merged.acts)
    np.testing.assert_array_equal(again.features("train"), acts.features("train"))
    assert run_extract(ExtractSettings(**{**base.__dict__, "out": merged.acts})).skipped  # the same extraction


def test_another_layer_gives_a_file_without_head(tmp_path: Path, mlp: tuple[nn.Sequential, Path]) -> None:
    model, weights = mlp
    result = run_extract(ExtractSettings(model="module:digits_net:mlp", weights=weights, dataset="mnist5k", layer="2",
                                         splits=("test",), out=tmp_path / "relu.h5", threads=1))
    acts = read_activations(result.acts)
    assert (result.width, result.layer) == (32, "output of 2") and not acts.header.has_head and not acts.header.has_logits
    with torch.no_grad():
        np.testing.assert_allclose(acts.features("test"), model[:3](load_dataset("mnist5k").test_x).numpy(), atol=1e-6)


def test_no_strict_loads_what_matches_reproducibly(tmp_path: Path, mlp: tuple[nn.Sequential, Path]) -> None:
    model, _ = mlp
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("5.")}
    torch.save({"state_dict": body}, tmp_path / "body.pt")
    settings = ExtractSettings(model="module:digits_net:mlp", weights=tmp_path / "body.pt", dataset="mnist5k", strict=False,
                               splits=("test",), out=tmp_path / "a.h5", threads=1)
    with pytest.raises(InputError, match=re.escape("2 missing (e.g. 5.weight)")):
        run_extract(ExtractSettings(**{**settings.__dict__, "strict": True}))
    first = run_extract(settings)
    assert first.notes and "2 tensors of the model are not in the weights" in first.notes[0]
    second = run_extract(ExtractSettings(**{**settings.__dict__, "out": tmp_path / "b.h5"}))
    # the head left at its initial values is the same in both: the construction is seeded
    np.testing.assert_array_equal(read_activations(first.acts).head()[0], read_activations(second.acts).head()[0])
    np.testing.assert_allclose(read_activations(first.acts).features("test"),
                               model[:5](load_dataset("mnist5k").test_x).detach().numpy(), atol=1e-6)


def test_safetensors_weights(tmp_path: Path, mlp: tuple[nn.Sequential, Path]) -> None:
    from safetensors.torch import save_file

    model, _ = mlp
    save_file(model.state_dict(), tmp_path / "mlp.safetensors")
    result = run_extract(ExtractSettings(model="module:digits_net:mlp", weights=tmp_path / "mlp.safetensors", dataset="mnist5k",
                                         splits=("test",), out=tmp_path / "a.h5", threads=1))
    np.testing.assert_array_equal(read_activations(result.acts).head()[0], model[5].weight.detach().numpy())
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(InputError, match=re.escape("not a readable .safetensors file")):
        run_extract(ExtractSettings(model="module:digits_net:mlp", weights=tmp_path / "bad.safetensors", dataset="mnist5k",
                                    out=tmp_path / "b.h5"))


@pytest.mark.parametrize("changes, message", [
    ({"source": Path("run")}, "SOURCE reads a run of `mitosis train`; not with --model"),
    ({"epoch": 3}, "--epoch reads a run"),
    ({"weights": None}, "--model needs --weights"),
    ({"images": Path("imgs")}, "--model needs one input"),
    ({"image_size": 64}, "--image-size transforms --images"),
    ({"out": None}, "--model needs --out"),
    ({"model": "timm:resnet50"}, "expected torchvision:NAME"),
    ({"model": None}, "--weights reads a network mitosis did not train"),
    ({"batch_size": 0}, "--batch-size must be between 1 and"),
])
def test_options_checked_before_anything_runs(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    base = ExtractSettings(model="module:digits_net:mlp", weights=tmp_path / "w.pt", dataset="mnist5k", out=tmp_path / "a.h5")
    with pytest.raises(InputError, match=message):
        run_extract(ExtractSettings(**{**base.__dict__, **changes}))
    assert not (tmp_path / "a.h5").exists()
