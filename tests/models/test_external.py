"""Networks mitosis did not train: the --model forms, weights loading, the head found, the layer read by a hook."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn

from mitosis_cli.errors import InputError
from mitosis_cli.models.external import LayerTap, build_external, find_head, find_state_dict, head_classes, load_weights
from mitosis_cli.models.spec import ModelRef, parse_model_ref


@pytest.mark.parametrize("text, ref", [
    ("torchvision:resnet50", ModelRef("torchvision", "resnet50")),
    ("module:mynets.cifar:build", ModelRef("module", "mynets.cifar", "build")),
    ("module:nets:make_net", ModelRef("module", "nets", "make_net")),
])
def test_model_forms(text: str, ref: ModelRef) -> None:
    assert parse_model_ref(text) == ref and str(ref) == text


@pytest.mark.parametrize("text", ["resnet50", "torchvision:", "torchvision:res-net", "module:nets", "module:a..b:f",
                                  "module:nets:1f", "timm:resnet50"])
def test_bad_model_forms(text: str) -> None:
    with pytest.raises(InputError, match="expected torchvision:NAME"):
        parse_model_ref(text)


def test_torchvision_is_built_offline_with_the_classes_asked() -> None:
    model = build_external(ModelRef("torchvision", "resnet18"), 7)
    assert isinstance(model, torchvision.models.ResNet) and model.fc.out_features == 7
    with pytest.raises(InputError, match="not a torchvision classification architecture") as err:
        build_external(ModelRef("torchvision", "resnet81"), None)
    assert "resnet18" in (err.value.hint or "")


class TwoHeads(nn.Module):
    """A Linear with C outputs inside the body, and the real head last: the last one registered is the head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, classes), nn.ReLU(), nn.Linear(classes, 8), nn.Tanh())
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_the_head_is_the_last_linear_with_c_outputs_and_its_input_is_read() -> None:
    torch.manual_seed(0)
    model = TwoHeads().eval()
    assert find_head(model, 3)[0] == "head" and head_classes(model) == 3
    tap = LayerTap.choose(model, 3, None)
    assert tap == LayerTap("head", "head") and tap.description == "input of head (the classification head)"
    x = torch.randn(6, 5)
    with tap.reading(model) as seen:
        logits = model(x)
    torch.testing.assert_close(seen["features"], model.body(x))
    torch.testing.assert_close(seen["logits"], logits)
    with pytest.raises(InputError, match=re.escape("no nn.Linear with 4 outputs")):
        find_head(model, 4)


def test_another_layer_is_read_at_its_output_without_a_head() -> None:
    torch.manual_seed(0)
    model = TwoHeads().eval()
    tap = LayerTap.choose(model, 3, "body.1")
    assert tap == LayerTap("body.1", "") and tap.head_module(model) is None and tap.description == "output of body.1"
    x = torch.randn(4, 5)
    with tap.reading(model) as seen:
        model(x)
    torch.testing.assert_close(seen["features"], torch.relu(model.body[0](x)))
    assert "logits" not in seen
    assert LayerTap.choose(model, 3, "body.0") == LayerTap("body.0", "body.0")  # a Linear with C outputs: read as the head
    with pytest.raises(InputError, match="no such module") as err:
        LayerTap.choose(model, 3, "body.9")
    assert "body.1" in (err.value.hint or "")


def test_a_module_run_twice_per_pass_is_refused() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, shared)
    with LayerTap("0", "").reading(model) as _, pytest.raises(InputError, match="more than once"):
        model(torch.randn(2, 4))


def test_state_dict_is_found_plain_or_nested() -> None:
    state = {"w": torch.zeros(2)}
    assert find_state_dict(state, "f") == state
    assert find_state_dict({"epoch": 3, "optimizer": {"lr": 0.1}, "model_state_dict": state}, "f") == state
    with pytest.raises(InputError, match=r"no state dict found.*epoch, optimizer"):
        find_state_dict({"epoch": 3, "optimizer": {"lr": 0.1}}, "f")


def test_wrapper_prefixes_are_removed_and_strict_refuses_missing_keys() -> None:
    torch.manual_seed(0)
    source = TwoHeads()
    target = TwoHeads()
    wrapped = {f"module._orig_mod.{k}": v for k, v in source.state_dict().items()}
    loaded = load_weights(target, wrapped, strict=True, where="w.pt", name="net")
    assert loaded.loaded == len(source.state_dict()) and not loaded.missing and not loaded.unexpected
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)
    partial = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")} | {"extra": torch.zeros(1)}
    with pytest.raises(InputError, match=re.escape("2 missing (e.g. head.weight) and 1 unexpected (e.g. extra)")):
        load_weights(TwoHeads(), partial, strict=True, where="w.pt", name="net")
    fresh = TwoHeads()
    initial = fresh.head.weight.detach().clone()
    loaded = load_weights(fresh, partial, strict=False, where="w.pt", name="net")
    assert loaded.missing == ("head.weight", "head.bias") and loaded.unexpected == ("extra",)
    torch.testing.assert_close(fresh.head.weight.detach(), initial)  # kept at its initial values
    torch.testing.assert_close(fresh.body[0].weight.detach(), source.body[0].weight.detach())


def test_weights_of_another_shape_or_architecture_are_refused() -> None:
    torch.manual_seed(0)
    five = TwoHeads()
    five.head = nn.Linear(8, 5)
    message = "2 tensor(s) of another shape, e.g. head.weight is [3, 8] in the file, [5, 8]"
    with pytest.raises(InputError, match=re.escape(message)) as err:
        load_weights(five, TwoHeads().state_dict(), strict=False, where="w.pt", name="net")
    assert "--num-classes" in (err.value.hint or "")
    with pytest.raises(InputError, match="none of its 2 tensors is a parameter"):
        load_weights(TwoHeads(), nn.Linear(2, 2).state_dict(), strict=False, where="w.pt", name="net")
