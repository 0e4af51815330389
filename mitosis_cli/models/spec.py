"""What a model is (architecture, width, depth, ending) and which combinations exist; no torch needed."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mitosis_cli.errors import InputError

ARCHS = ("mlp", "wrn", "densenet")
ENDINGS = ("relu", "batchnorm")
DEFAULT_DEPTH = {"mlp": 2, "wrn": 28, "densenet": 40}
DEFAULT_ENDING = {"mlp": "relu", "wrn": "batchnorm", "densenet": "batchnorm"}


@dataclass(frozen=True)
class ModelSpec:
    """What a model is: architecture, last-layer width W, depth and how the last hidden layer ends."""

    arch: str
    width: int
    depth: int
    ending: str

    @property
    def family(self) -> str:
        """The architecture without its width (the `arch` of an activation file): mlp-2-relu, wrn-28-batchnorm.

        Networks of one family and different widths are what the number of clones is compared across.
        """
        base = {"mlp": "mlp", "wrn": "wrn", "densenet": "densenet-bc"}[self.arch]
        return f"{base}-{self.depth}-{self.ending}"

    @property
    def label(self) -> str:
        """A readable name: mlp-2-w256, wrn-28-8, densenet-bc-40-w176."""
        if self.arch == "wrn":
            k = self.width / 64
            return f"wrn-{self.depth}-{k:g}"
        if self.arch == "densenet":
            return f"densenet-bc-{self.depth}-w{self.width}"
        return f"mlp-{self.depth}-w{self.width}"


def check_spec(spec: ModelSpec) -> None:
    """Raise `InputError` if the architecture cannot have this width or depth."""
    if spec.arch not in ARCHS:
        raise InputError(f"unknown architecture {spec.arch!r}", hint=f"choose one of: {', '.join(ARCHS)}")
    if spec.ending not in ENDINGS:
        raise InputError(f"unknown ending {spec.ending!r}", hint=f"choose one of: {', '.join(ENDINGS)}")
    if spec.width < 1:
        raise InputError(f"--width must be positive, got {spec.width}")
    if spec.arch == "mlp" and spec.depth < 1:
        raise InputError(f"an MLP needs --depth >= 1, got {spec.depth}")
    if spec.arch == "wrn":
        if spec.depth < 10 or (spec.depth - 4) % 6:
            raise InputError(f"Wide-ResNet depth must be 6n+4 (e.g. 16 or 28), got {spec.depth}")
        if spec.width % 4:
            lo, hi = 4 * (spec.width // 4), 4 * (spec.width // 4 + 1)
            raise InputError(
                f"Wide-ResNet width {spec.width} is not reachable: W = 64k with groups of W/4, W/2, W channels, "
                f"so W must be a multiple of 4 (nearest: {lo or hi}, {hi})"
            )
    if spec.arch == "densenet":
        if spec.depth < 10 or (spec.depth - 4) % 6:
            raise InputError(f"DenseNet-BC depth must be 6n+4 (e.g. 40), got {spec.depth}")
        growth = densenet_growth(spec)
        if densenet_width(growth, spec.depth) != spec.width:
            options = sorted({densenet_width(g, spec.depth) for g in (max(1, growth), growth + 1)})
            raise InputError(
                f"DenseNet-BC-{spec.depth} width {spec.width} is not reachable: W is set by the growth rate "
                f"(W = 5.5F = 11g at depth 40); nearest widths: {', '.join(map(str, options))}"
            )


def densenet_growth(spec: ModelSpec) -> int:
    per_growth = densenet_width(1000, spec.depth) / 1000  # channels per unit of growth (11 at depth 40)
    return max(1, math.floor(spec.width / per_growth))

def densenet_width(growth: int, depth: int) -> int:
    """Last-layer width of DenseNet-BC-`depth` with growth rate `growth`."""
    n = (depth - 4) // 6
    ch = 2 * growth
    for block in range(3):
        ch += n * growth
        if block < 2:
            ch //= 2
    return ch


@dataclass(frozen=True)
class ModelRef:
    """A network mitosis did not train: ``torchvision:NAME`` or ``module:PKG.MOD:FACTORY`` (`--model`).

    Attributes
    ----------
    kind : str
        ``torchvision`` (an architecture of torchvision.models, built with its constructor, no weights
        downloaded) or ``module`` (a factory function of the user's own code, imported).
    name : str
        The torchvision architecture (``resnet50``), or the module path (``mypkg.nets``).
    factory : str
        The factory function in that module (empty for torchvision).
    """

    kind: str
    name: str
    factory: str = ""

    @property
    def arch(self) -> str:
        """The `arch` of the activation file: ``resnet50``, or ``mypkg.nets:build_net``."""
        return self.name if self.kind == "torchvision" else f"{self.name}:{self.factory}"

    def __str__(self) -> str:
        return f"{self.kind}:{self.arch}"


MODEL_REF_FORMS = "torchvision:NAME (e.g. torchvision:resnet50) or module:PKG.MOD:FACTORY (e.g. module:mynets.cifar:build)"


def parse_model_ref(text: str) -> ModelRef:
    """``--model`` text -> `ModelRef`; one `InputError` line when it is neither form."""
    kind, _, rest = text.partition(":")
    if kind == "torchvision" and rest.isidentifier():
        return ModelRef("torchvision", rest)
    module, _, factory = rest.rpartition(":")
    if kind == "module" and factory.isidentifier() and all(part.isidentifier() for part in module.split(".")):
        return ModelRef("module", module, factory)
    raise InputError(f"--model {text!r}: expected {MODEL_REF_FORMS}")
