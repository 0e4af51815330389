"""Models: the last hidden layer has width W, the head is (C, W), and impossible widths are refused."""

import pytest
import torch

from mitosis_cli.errors import InputError
from mitosis_cli.models.registry import build_model
from mitosis_cli.models.spec import ModelSpec


@pytest.mark.parametrize(
    "spec, shape",
    [
        (ModelSpec("mlp", 48, 3, "relu"), (1, 28, 28)),
        (ModelSpec("mlp", 32, 1, "batchnorm"), (20,)),
        (ModelSpec("wrn", 64, 16, "batchnorm"), (3, 16, 16)),
        (ModelSpec("wrn", 16, 16, "relu"), (1, 12, 12)),
        (ModelSpec("densenet", 44, 16, "batchnorm"), (3, 16, 16)),
    ],
)
def test_features_and_head_shapes(spec: ModelSpec, shape: tuple[int, ...]) -> None:
    model = build_model(spec, shape, num_classes=7).eval()
    x = torch.randn(5, *shape)
    feats = model.features(x)
    assert feats.shape == (5, spec.width)
    assert model.head.weight.shape == (7, spec.width)
    torch.testing.assert_close(model(x), feats @ model.head.weight.T + model.head.bias)


def test_batchnorm_ending_has_no_relu() -> None:
    relu = build_model(ModelSpec("mlp", 64, 2, "relu"), (10,), 3).eval()
    bn = build_model(ModelSpec("mlp", 64, 2, "batchnorm"), (10,), 3).train()
    x = torch.randn(256, 10)
    assert (relu.features(x) >= 0).all()
    feats = bn.features(x)
    assert (feats < 0).any()
    # in train mode a BatchNorm output has zero mean and unit variance per neuron
    torch.testing.assert_close(feats.mean(0), torch.zeros(64), atol=1e-5, rtol=0)


def test_wrn_channels_follow_width() -> None:
    model = build_model(ModelSpec("wrn", 128, 16, "batchnorm"), (3, 8, 8), 10)
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0] == 16 and max(convs) == 128 and 32 in convs and 64 in convs
    assert ModelSpec("wrn", 512, 28, "batchnorm").label == "wrn-28-8"
    assert ModelSpec("wrn", 512, 28, "batchnorm").family == ModelSpec("wrn", 64, 28, "batchnorm").family == "wrn-28-batchnorm"


@pytest.mark.parametrize(
    "spec, message",
    [
        (ModelSpec("wrn", 30, 28, "batchnorm"), "multiple of 4"),
        (ModelSpec("wrn", 64, 27, "batchnorm"), "6n\\+4"),
        (ModelSpec("densenet", 100, 40, "batchnorm"), "nearest widths: 99, 110"),
        (ModelSpec("resnet", 64, 2, "relu"), "unknown architecture"),
        (ModelSpec("mlp", 0, 2, "relu"), "positive"),
    ],
)
def test_unreachable_specs(spec: ModelSpec, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build_model(spec, (3, 8, 8), 10)


def test_cnn_needs_images() -> None:
    with pytest.raises(InputError, match="image inputs"):
        build_model(ModelSpec("wrn", 64, 16, "batchnorm"), (784,), 10)


def test_count_parameters_matches_the_mlp_formula() -> None:
    from mitosis_cli.data.registry import dataset_input_shape
    from mitosis_cli.models.registry import count_parameters

    w = 48
    expected = (784 * w + w) + (w * w + w) + (w * 10 + 10)
    assert count_parameters(ModelSpec("mlp", w, 2, "relu"), dataset_input_shape("mnist5k"), 10) == expected
    assert dataset_input_shape("synthetic:d=30") == (30,) and dataset_input_shape("cifar100") == (3, 32, 32)
