"""Read a trained (or freshly initialised) model's last hidden layer on whole splits, streamed to HDF5."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mitosis_cli.data import Dataset, load_dataset
from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import ActivationHeader, Batch, write_activations
from mitosis_cli.io.checkpoints import load_checkpoint
from mitosis_cli.io.shards import shard_range
from mitosis_cli.io.tables import file_sha256
from mitosis_cli.models.registry import build_model
from mitosis_cli.training.config import TrainConfig
from mitosis_cli.training.loop import CHECKPOINT

EXTRACT_BATCH = 1024
LAYER_NAME = "last-hidden (input of the linear head)"


@dataclass(frozen=True)
class TrainedModel:
    """A model restored from a checkpoint, with its config and where it came from."""

    model: nn.Module
    config: TrainConfig
    epoch: int
    checkpoint: Path
    num_classes: int
    checkpoint_sha256: str  # hashed once: both the cache check and the file attributes need it


def find_checkpoint(source: Path, epoch: int | None) -> Path:
    """A run directory (last checkpoint, or checkpoints/epoch-NNNN.pt with `epoch`) or a checkpoint file."""
    if source.is_dir():
        if epoch is None:
            path = source / CHECKPOINT
        else:
            path = source / "checkpoints" / f"epoch-{epoch:04d}.pt"
            if not path.exists():
                saved = sorted(p.stem.removeprefix("epoch-") for p in (source / "checkpoints").glob("epoch-*.pt"))
                listed = ", ".join(s.lstrip("0") or "0" for s in saved) or "none (use --save-epochs when training)"
                raise InputError(f"{source}: no checkpoint for epoch {epoch}", hint=f"saved epochs: {listed}")
        if not path.exists():
            raise InputError(f"{source}: no {CHECKPOINT} in this run directory", hint="train it first with `mitosis train`")
        return path
    if epoch is not None:
        raise InputError("--epoch needs a run directory, not a checkpoint file")
    if not source.exists():
        raise InputError(f"{source}: no such run directory or checkpoint")
    return source


def load_trained_model(source: Path, epoch: int | None = None, untrained: bool = False,
                       device: torch.device | None = None) -> TrainedModel:
    """Restore the model of a run; with `untrained`, the same architecture at its seeded initialisation."""
    path = find_checkpoint(source, epoch)
    ckpt = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(json.loads(ckpt["config"]))
        input_shape, num_classes = tuple(ckpt["input_shape"]), int(ckpt["num_classes"])
    except (json.JSONDecodeError, KeyError, TypeError, InputError) as err:  # InputError: unknown options, named here
        raise InputError(f"{path}: checkpoint config is unreadable ({err})") from err
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model_spec, input_shape, num_classes)
    if not untrained:
        try:
            model.load_state_dict(ckpt["model"])
        except (RuntimeError, TypeError) as err:
            raise InputError(f"{path}: the weights do not match the architecture in its config ({cfg.model_spec.label})") from err
    model = model.to(device or torch.device("cpu")).eval()
    return TrainedModel(model, cfg, 0 if untrained else int(ckpt["epoch"]), path, num_classes, file_sha256(path))


@torch.no_grad()
def _batches(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Iterator[Batch]:
    for start in range(0, len(y), EXTRACT_BATCH):
        xb = x[start : start + EXTRACT_BATCH].to(device)
        feats = model.features(xb).float()
        logits = model.head(feats)
        yield feats.cpu().numpy(), logits.float().cpu().numpy(), y[start : start + EXTRACT_BATCH].cpu().numpy()


def extraction_config(trained: TrainedModel, untrained: bool, noise_inputs: bool) -> dict[str, object]:
    """The `config` attribute an extraction writes: the run's config plus the controls used."""
    return trained.config.to_dict() | {"untrained": untrained, "noise_inputs": noise_inputs}


def extraction_header(trained: TrainedModel, splits: tuple[str, ...], untrained: bool, noise_inputs: bool,
                      shard: tuple[int, int] | None) -> ActivationHeader:
    """The header an extraction of `trained` writes (its `stamp` decides whether an existing file is current)."""
    cfg = trained.config
    return ActivationHeader(
        width=cfg.width, num_classes=trained.num_classes, dataset=cfg.dataset, arch=cfg.model_spec.family, seed=cfg.seed,
        epoch=trained.epoch, layer=LAYER_NAME, config=extraction_config(trained, untrained, noise_inputs),
        source_sha256=trained.checkpoint_sha256, inputs="gaussian-noise" if noise_inputs else "data",
        shard=f"{shard[0]}/{shard[1]}" if shard else "", splits=dict.fromkeys(splits, 0))


def extract_activations(
    trained: TrainedModel,
    out: Path,
    splits: tuple[str, ...] = ("train", "test"),
    *,
    data: Dataset | None = None,
    data_dir: Path | None = None,
    noise_inputs: bool = False,
    untrained: bool = False,
    device: torch.device | None = None,
    shard: tuple[int, int] | None = None,
) -> Path:
    """Write the last hidden layer, logits and labels of `splits` (eval mode, no augmentation) to `out`.

    With `noise_inputs`, each split's inputs are replaced by standard Gaussian noise of the same shape
    (seeded by the run's seed); labels are kept, so accuracies measure chance. With ``shard=(k, n)``
    only the k-th of n contiguous row ranges of each split is written (`io.shards.merge_shards`
    joins the parts).
    """
    device = device or torch.device("cpu")
    cfg = trained.config
    if data is None:
        data = load_dataset(cfg.dataset, data_dir, False, cfg.train_size)
    model = trained.model
    head = model.head
    arrays = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
    gen = torch.Generator().manual_seed(cfg.seed)
    streams = {}
    shard_rows = {}
    for name in splits:
        x, y = arrays[name]
        if noise_inputs:  # drawn for the whole split, so shards see the same noise as one extraction
            x = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        if shard is not None:
            start, stop = shard_range(len(y), *shard)
            shard_rows[name] = [start, stop, len(y)]
            x, y = x[start:stop], y[start:stop]
        streams[name] = (len(y), _batches(model, x, y, device))
    header = dataclasses.replace(extraction_header(trained, splits, untrained, noise_inputs, shard), shard_rows=shard_rows)
    weight = head.weight.detach().float().cpu().numpy()
    bias = head.bias.detach().float().cpu().numpy()
    return write_activations(out, header, weight, bias, streams)
