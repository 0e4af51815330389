"""Networks mitosis did not train: a torchvision architecture or a user's factory, their weights, the layer read.

Nothing is downloaded: a torchvision architecture is built by its constructor with ``weights=None``
and random weights, then the user's local weights are loaded into it (the file is read elsewhere with
``weights_only=True``: `io.checkpoints.load_torch_file`). ``module:PKG.MOD:FACTORY`` imports the
user's own code and calls the factory; that is the trust boundary: the code runs, as any import does,
while a weights file is never unpickled.

The studied layer is the input of the classification head, the last ``nn.Linear`` whose output size
is the number of classes (found in the order modules are registered, which is the order torchvision's
models run them), and read with a forward hook; another module can be named instead (`LayerTap`).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mitosis_cli.errors import InputError
from mitosis_cli.models.spec import ModelRef

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # nn.DataParallel / DistributedDataParallel, torch.compile
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")  # where training scripts nest it


def torchvision_names() -> list[str]:
    """The classification architectures of torchvision.models (what ``torchvision:NAME`` accepts)."""
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def build_external(ref: ModelRef, num_classes: int | None) -> nn.Module:
    """The architecture of `ref` with random weights; `num_classes` None keeps the constructor's default head.

    Raises
    ------
    InputError
        An unknown torchvision name, a module or factory that cannot be imported or called, or a factory that
        does not return an ``nn.Module``.
    """
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if ref.kind == "torchvision":
        import torchvision.models

        names = torchvision_names()
        if ref.name not in names:
            close = difflib.get_close_matches(ref.name, names, n=3)
            raise InputError(f"--model torchvision:{ref.name}: not a torchvision classification architecture",
                             hint=f"did you mean {', '.join(close)}?" if close else f"one of: {', '.join(names)}")
        with warnings.catch_warnings():  # googlenet/inception_v3 warn about a future change of their initialisation
            warnings.simplefilter("ignore", FutureWarning)
            return torchvision.models.get_model(ref.name, weights=None, **kwargs)
    try:
        with _current_folder_importable():
            model = _factory(ref)(**kwargs)
    except InputError:
        raise
    except Exception as err:  # the user's code can fail any way: one line naming the error
        first = (str(err).splitlines() or [""])[0][:160]
        raise InputError(f"--model {ref}: the factory raised {type(err).__name__}: {first}",
                         hint="without --num-classes it is called with no arguments, with it as factory(num_classes=N)") from err
    if not isinstance(model, nn.Module):
        raise InputError(f"--model {ref}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


@contextmanager
def _current_folder_importable() -> Iterator[None]:
    """The current folder on sys.path while the user's module is imported and its factory runs, as `python -m`
    would have it (the `mitosis` console script does not)."""
    folder = os.getcwd()
    added = folder not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _factory(ref: ModelRef) -> Any:
    try:
        module = importlib.import_module(ref.name)
    except Exception as err:  # importing user code can fail any way: one line naming the error
        raise InputError(f"--model {ref}: cannot import {ref.name} ({type(err).__name__}: {err})",
                         hint="the module must be importable: installed, in the current folder, or on PYTHONPATH") from err
    factory = getattr(module, ref.factory, None)
    if not callable(factory):
        raise InputError(f"--model {ref}: {ref.name} has no function {ref.factory!r}")
    return factory


def factory_file(ref: ModelRef) -> Path | None:
    """The source file of a ``module:`` model's module (hashed into the extraction's stamp); None for torchvision."""
    if ref.kind != "module" or ref.name not in sys.modules:
        return None
    source = getattr(sys.modules[ref.name], "__file__", None)
    return Path(source) if source else None


def find_state_dict(payload: Any, where: str) -> dict[str, torch.Tensor]:
    """The state dict in a loaded weights file: the file itself, or under a usual key (`STATE_KEYS`)."""
    candidates = [payload] + [payload[key] for key in STATE_KEYS if isinstance(payload, Mapping) and key in payload]
    for candidate in candidates:
        if isinstance(candidate, Mapping) and candidate and all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in candidate.items()):
            return dict(candidate)
    keys = ", ".join(map(str, list(payload)[:8])) if isinstance(payload, Mapping) else type(payload).__name__
    raise InputError(f"{where}: no state dict found (a dict of tensors, plain or under one of "
                     f"{', '.join(STATE_KEYS)}); the file holds {keys or 'nothing'}")


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` / ``_orig_mod.`` when every key carries it and the model's own keys do not."""
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in model_keys):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


@dataclass(frozen=True)
class LoadedWeights:
    """What loading changed: with ``strict=False`` some parameters may stay at their random initial values."""

    loaded: int
    missing: tuple[str, ...]  # in the model, not in the file (kept at their initial values)
    unexpected: tuple[str, ...]  # in the file, not in the model (ignored)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], strict: bool, where: str, name: str) -> LoadedWeights:
    """Load `state` into `model`, after removing wrapper prefixes (`WRAPPER_PREFIXES`).

    With `strict`, the keys must be exactly the model's; without, keys on one side only are allowed (and
    reported), but at least one must match. Shapes must always match: a tensor of another shape means
    weights of another architecture or another number of classes.
    """
    own = model.state_dict()
    state = _strip_wrapper_prefixes(state, set(own))
    missing = tuple(k for k in own if k not in state)
    unexpected = tuple(k for k in state if k not in own)
    reshaped = [k for k in state if k in own and state[k].shape != own[k].shape]
    if reshaped:
        key = reshaped[0]
        hint = "give the number of classes of these weights with --num-classes" if own[key].ndim and key.endswith(
            (".weight", ".bias")) and state[key].shape[1:] == own[key].shape[1:] else "check --model"
        raise InputError(f"{where}: does not fit {name}: {len(reshaped)} tensor(s) of another shape, e.g. {key} is "
                         f"{list(state[key].shape)} in the file, {list(own[key].shape)} in the model", hint=hint)
    if len(missing) == len(own):
        raise InputError(f"{where}: does not fit {name}: none of its {len(state)} tensors is a parameter of the model "
                         f"(e.g. {next(iter(state))!r}; the model has {next(iter(own))!r})", hint="check --model")
    if strict and (missing or unexpected):
        parts = ([f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []) + (
            [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else [])
        raise InputError(f"{where}: does not fit {name}: {' and '.join(parts)}",
                         hint="--no-strict loads what matches and keeps the rest at its initial values")
    model.load_state_dict(state, strict=False)
    return LoadedWeights(len(own) - len(missing), missing, unexpected)


def find_head(model: nn.Module, num_classes: int) -> tuple[str, nn.Linear]:
    """The classification head: the last ``nn.Linear`` (in registration order) with `num_classes` outputs."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not found:
        raise InputError(f"the model has no nn.Linear with {num_classes} outputs to read as its classification head",
                         hint="give the number of classes with --num-classes, or name the layer to read with --layer")
    return found[-1]


def head_classes(model: nn.Module) -> int:
    """The output size of the model's last ``nn.Linear`` (a ``module:`` model's classes when none are given)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError("the model has no nn.Linear layer to read as its classification head",
                         hint="give --num-classes and name the layer to read with --layer")
    return linears[-1].out_features


@dataclass(frozen=True)
class LayerTap:
    """Which layer a forward pass is read at, and the head that reads it.

    Attributes
    ----------
    layer : str
        The module whose input (when it is the head) or output (any other module) is the studied layer.
    head : str
        The classification head (an ``nn.Linear``), or "" when the studied layer is not its input.
    """

    layer: str
    head: str

    @property
    def description(self) -> str:
        """The activation file's `layer` attribute."""
        return f"input of {self.layer} (the classification head)" if self.layer == self.head else f"output of {self.layer}"

    @classmethod
    def choose(cls, model: nn.Module, num_classes: int, layer: str | None) -> LayerTap:
        """The head's input by default; `layer` names another module (a Linear is then the head read)."""
        modules = dict(model.named_modules())
        if layer is None:
            head, _ = find_head(model, num_classes)
            return cls(head, head)
        if layer not in modules or not layer:
            close = difflib.get_close_matches(layer, [n for n in modules if n], n=3)
            raise InputError(f"--layer {layer!r}: the model has no such module",
                             hint=f"did you mean {', '.join(close)}?" if close else "module names as in model.named_modules()")
        chosen = modules[layer]
        is_head = isinstance(chosen, nn.Linear) and chosen.out_features == num_classes
        return cls(layer, layer if is_head else "")

    def head_module(self, model: nn.Module) -> nn.Linear | None:
        return dict(model.named_modules())[self.head] if self.head else None

    @contextmanager
    def reading(self, model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
        """Hooks that store, on every forward pass, ``features`` (N, W) and, with a head, ``logits`` (N, C)."""
        seen: dict[str, torch.Tensor] = {}
        module = dict(model.named_modules())[self.layer]

        def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if "features" in seen:
                raise InputError(f"--layer {self.layer}: the module runs more than once per forward pass; name another")
            value = inputs[0] if self.head else output
            seen["features"] = value.detach().flatten(1).float()
            if self.head:
                seen["logits"] = output.detach().float()

        handle = module.register_forward_hook(hook)
        try:
            yield seen
        finally:
            handle.remove()
