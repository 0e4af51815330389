"""Read a network mitosis did not train (a torchvision architecture or a user's factory, with local weights)
at its last hidden layer, on an image folder or a registered data set, streamed to an activation file."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from mitosis_cli.data import load_dataset
from mitosis_cli.data.image_folder import ImageFolder, ImageSplit, ImageTransform
from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import ActivationHeader, Batch, write_activations
from mitosis_cli.io.checkpoints import load_torch_file
from mitosis_cli.io.shards import shard_range
from mitosis_cli.io.tables import file_sha256
from mitosis_cli.models.external import LayerTap, LoadedWeights, build_external, factory_file, find_state_dict, head_classes
from mitosis_cli.models.external import load_weights as load_state
from mitosis_cli.models.spec import ModelRef

TORCHVISION_CLASSES = 1000  # the torchvision constructors' default head (ImageNet)
OnRows = Callable[[str, int, int], None]  # (split, rows done, rows in the split)


@dataclass(frozen=True)
class ExternalModel:
    """A user's network with its weights loaded, and the layer it is read at."""

    model: nn.Module
    ref: ModelRef
    tap: LayerTap
    num_classes: int  # outputs of the head (the model's classes)
    weights: Path
    weights_sha256: str
    factory_sha256: str  # the source file of a module: model ("" for torchvision)
    loaded: LoadedWeights


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file, or from a torch file read with ``weights_only=True``."""
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            detail = (str(err).splitlines() or [type(err).__name__])[0][:100]
            raise InputError(f"{path}: not a readable .safetensors file ({detail})") from err
    return find_state_dict(load_torch_file(path, "weights file"), str(path))


def load_external_model(ref: ModelRef, weights: Path, num_classes: int | None, strict: bool, layer: str | None,
                        device: torch.device) -> ExternalModel:
    """Build `ref` offline, load `weights` into it, and choose the layer read (the head's input unless `layer`)."""
    state = load_weights_file(weights)  # first: a bad file is refused before any user code runs
    with torch.random.fork_rng(devices=[]):  # seeded: what --no-strict leaves at its initial values is reproducible
        torch.manual_seed(0)
        model = build_external(ref, num_classes)
    classes = num_classes or (TORCHVISION_CLASSES if ref.kind == "torchvision" else head_classes(model))
    loaded = load_state(model, state, strict, str(weights), str(ref))
    tap = LayerTap.choose(model, classes, layer)
    source = factory_file(ref)
    return ExternalModel(model.to(device).eval(), ref, tap, classes, weights, file_sha256(weights),
                         file_sha256(source) if source else "", loaded)


@dataclass(frozen=True)
class ExternalInputs:
    """The samples an external model is read on: per split, a dataset of (input, label, readable) items."""

    dataset: str  # the activation file's `dataset`: the image folder's name or the registered data set
    class_names: tuple[str, ...]
    num_classes: int
    splits: dict[str, Dataset[Any]]
    options: dict[str, Any]  # what the stamp holds of the inputs


def image_inputs(root: Path, transform: ImageTransform) -> ExternalInputs:
    """An image folder in ImageFolder layout (`data.image_folder`), with its stamp: file names, sizes, transform."""
    transform.check()
    folder = ImageFolder.scan(root)
    options = {"images": folder.digest(), "images_per_split": {s: len(f) for s, f in folder.files.items()},
               "image_size": transform.image_size, "resize": transform.resize, "mean": list(transform.mean),
               "std": list(transform.std)}
    splits: dict[str, Dataset[Any]] = {s: ImageSplit(files, transform) for s, files in folder.files.items()}
    return ExternalInputs(root.resolve().name, folder.class_names, len(folder.class_names), splits, options)


def dataset_inputs(name: str, data_dir: Path | None) -> ExternalInputs:
    """A registered data set (`--dataset`) as mitosis trains on it: its own normalisation and size."""
    data = load_dataset(name, data_dir)
    splits: dict[str, Dataset[Any]] = {
        split: TensorDataset(x, y, torch.ones(len(y), dtype=torch.bool))
        for split, (x, y) in (("train", (data.train_x, data.train_y)), ("test", (data.test_x, data.test_y)))}
    return ExternalInputs(name, (), data.num_classes, splits, {"dataset": name})


def _forward(ext: ExternalModel, seen: dict[str, torch.Tensor], x: torch.Tensor) -> None:
    seen.clear()
    try:
        ext.model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:  # inputs the architecture cannot take
        first = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise InputError(f"{ext.ref} cannot read inputs of shape {list(x.shape[1:])}: {first}",
                         hint="for an image folder set --image-size (and --mean/--std for the channels)") from err
    if "features" not in seen:
        raise InputError(f"{ext.ref}: module {ext.tap.layer!r} did not run in the forward pass; name another with --layer")


@torch.no_grad()
def layer_width(ext: ExternalModel, inputs: ExternalInputs, device: torch.device) -> int:
    """W, from one sample through the model (it also shows, before anything is written, that the inputs fit)."""
    split = next(iter(inputs.splits.values()))
    x = split[0][0].unsqueeze(0).to(device)
    with ext.tap.reading(ext.model) as seen:
        _forward(ext, seen, x)
    width = seen["features"].shape[1]
    head = ext.tap.head_module(ext.model)
    if head is not None and head.in_features != width:
        raise InputError(f"{ext.ref}: the input of {ext.tap.head} has {width} values per sample, its weight "
                         f"{head.in_features} columns (it is applied per token or position); name the layer with --layer")
    return width


def _image_path(data: Dataset[Any], index: int) -> str:
    """The file of row `index` of an `ImageSplit`, or of a shard (`Subset`) of one, for messages."""
    if isinstance(data, Subset):
        return _image_path(data.dataset, data.indices[index])
    return str(data.files[index][0])


@torch.no_grad()
def _batches(ext: ExternalModel, split: str, data: Dataset[Any], device: torch.device, batch_size: int, workers: int,
             on_rows: OnRows) -> Iterator[Batch]:
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers)
    done, total = 0, len(data)
    with ext.tap.reading(ext.model) as seen:
        for x, y, readable in loader:
            if not bool(readable.all()):
                bad = int((~readable).nonzero()[0, 0])
                raise InputError(f"{_image_path(data, done + bad)}: not a readable image")
            _forward(ext, seen, x.to(device))
            logits = seen.get("logits")
            yield (seen["features"].cpu().numpy(), None if logits is None else logits.cpu().numpy(),
                   y.to(torch.int64).numpy())
            done += len(y)
            on_rows(split, done, total)


def external_header(ext: ExternalModel, inputs: ExternalInputs, width: int, splits: tuple[str, ...], seed: int | None,
                    shard: tuple[int, int] | None) -> ActivationHeader:
    """The header (and so the stamp) of an extraction: the weights' sha256, the model options, the inputs' digest."""
    has_head = bool(ext.tap.head)
    if has_head and inputs.num_classes != ext.num_classes:
        raise InputError(f"the inputs have {inputs.num_classes} classes, the head of {ext.ref} {ext.num_classes} outputs",
                         hint="give --num-classes for weights with another head, or inputs with one class folder per output")
    config = {"model": str(ext.ref), "num_classes": ext.num_classes, "layer": ext.tap.layer, "factory_sha256": ext.factory_sha256,
              "weights_loaded": ext.loaded.loaded, "weights_missing": len(ext.loaded.missing),
              "weights_unexpected": len(ext.loaded.unexpected), "inputs": inputs.options}
    return ActivationHeader(
        width=width, num_classes=ext.num_classes if has_head else inputs.num_classes, dataset=inputs.dataset,
        arch=ext.ref.arch, seed=-1 if seed is None else seed, epoch=-1, layer=ext.tap.description, config=config,
        source_sha256=ext.weights_sha256, shard=f"{shard[0]}/{shard[1]}" if shard else "", splits=dict.fromkeys(splits, 0),
        class_names=inputs.class_names, has_head=has_head, has_logits=has_head)


def extract_external(ext: ExternalModel, inputs: ExternalInputs, header: ActivationHeader, out: Path, *,
                     device: torch.device, batch_size: int, workers: int = 0, shard: tuple[int, int] | None = None,
                     on_rows: OnRows = lambda *_: None) -> Path:
    """Stream the layer (and the head's logits) of every split of `header` to `out`, in batches."""
    streams, shard_rows = {}, {}
    for split in header.splits:
        data: Dataset[Any] = inputs.splits[split]
        if shard is not None:
            start, stop = shard_range(len(data), *shard)
            shard_rows[split] = [start, stop, len(data)]
            data = Subset(data, range(start, stop))
        streams[split] = (len(data), _batches(ext, split, data, device, batch_size, workers, on_rows))
    head = ext.tap.head_module(ext.model)
    weight = bias = None
    if head is not None:  # a head without a bias reads as one with a zero bias
        weight = head.weight.detach().float().cpu().numpy()
        bias = np.zeros(head.out_features, np.float32) if head.bias is None else head.bias.detach().float().cpu().numpy()
    return write_activations(out, dataclasses.replace(header, shard_rows=shard_rows), weight, bias, streams)
