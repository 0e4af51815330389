"""The training loop: data on the device, whole-batch augmentation, checkpoints that resume bit-exactly.

One function, `train_run`, reads top to bottom: set up (or restore) the model, optimiser and random
streams, then for each epoch shuffle, step through mini-batches, evaluate on the whole train and test
sets in eval mode, append a history row and save a checkpoint. A checkpoint holds the random-stream
states at the start of the epoch and the step inside it, so a run stopped anywhere (even mid-epoch,
by SIGTERM) resumes to the same weights as an uninterrupted run on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from mitosis_cli.data import Dataset, load_dataset
from mitosis_cli.data.augment import random_crop_flip
from mitosis_cli.errors import InputError, OutputError, Preempted
from mitosis_cli.io.atomic import atomic_path, staged_entries
from mitosis_cli.io.checkpoints import check_resume, load_checkpoint, save_checkpoint
from mitosis_cli.io.stamp import Stamp, decide
from mitosis_cli.io.tables import provenance, write_table
from mitosis_cli.models.registry import build_model
from mitosis_cli.runtime import StopFlag
from mitosis_cli.training.config import RUN_ENTRIES, TrainConfig
from mitosis_cli.training.distributed import Ranks, init_ranks, unwrap, wrap_model
from mitosis_cli.training.schedule import learning_rate

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.parquet"
CONFIG = "config.json"
EVAL_BATCH = 1024
_AUG_SEED_OFFSET = 0x5DEECE66D  # separate random stream for augmentation

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_error", "test_loss", "test_error", "seconds")
# Which network a history is, in every row, so histories stacked in pandas keep apart (same names as clones.parquet).
HISTORY_IDENTITY = ("arch", "dataset", "width", "seed")
HEARTBEAT_SECONDS = 30.0  # inside a long epoch, `on_batch` hears from the loop at least this often
K = TypeVar("K")


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (fast, no loss scaling needed); full precision on the CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             ranks: Ranks = Ranks()) -> tuple[float, float]:
    """Mean cross-entropy and error rate of `model` in eval mode on (x, y) (rows shared among ranks)."""
    model.eval()
    x, y = ranks.shard(x), ranks.shard(y)
    loss_sum, wrong = 0.0, 0.0
    for start in range(0, len(y), EVAL_BATCH):
        with autocast(device):
            logits = model(x[start : start + EVAL_BATCH]).float()
        target = y[start : start + EVAL_BATCH]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        wrong += (logits.argmax(1) != target).sum().item()
    loss_sum, wrong, count = ranks.all_sum([loss_sum, wrong, float(len(y))], device)
    return loss_sum / count, wrong / count


@dataclass
class TrainResult:
    """What a `train_run` did."""

    run_dir: Path
    epochs: int
    zero_error_epoch: int | None
    history: list[dict[str, float]]
    skipped: bool = False
    device: str = "cpu"

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def _optimizer(params: Iterable[torch.Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _steps_per_epoch(n_train: int, batch_size: int) -> tuple[int, int]:
    """(batch, optimiser steps per epoch). A final batch of one sample breaks BatchNorm in train mode: it is
    dropped (and reshuffled next epoch)."""
    batch = min(int(batch_size), n_train)
    return batch, n_train // batch + (1 if n_train % batch > 1 else 0)


def _keep_going(cfg: TrainConfig, epoch: int, history: list[dict[str, float]]) -> bool:
    """Whether a run that has done `epoch` epochs trains another one."""
    if epoch < int(cfg.epochs):
        return True
    unfit = not history or history[-1]["train_error"] > 0
    return bool(cfg.until_zero_error) and unfit and epoch < int(cfg.max_epochs)


def _write_history(run_dir: Path, cfg: TrainConfig, history: list[dict[str, float]], zero_error_epoch: int | None,
                   command: str) -> None:
    columns = {c: pa.array([row[c] for row in history], pa.int64() if c == "epoch" else pa.float64()) for c in HISTORY_COLUMNS}
    identity = {"arch": cfg.model_spec.family, "dataset": cfg.dataset, "width": cfg.width, "seed": cfg.seed}
    columns.update({c: pa.array([identity[c]] * len(history), pa.int64() if c in ("width", "seed") else pa.string())
                    for c in HISTORY_IDENTITY})
    table = pa.table(columns)
    meta = provenance("history", [], {"config": cfg.to_dict(), "zero_error_epoch": zero_error_epoch}, command)
    write_table(run_dir / HISTORY, table, meta)


def _checkpoint_payload(cfg: TrainConfig, model: nn.Module, data: Dataset, **state: Any) -> dict[str, Any]:
    return {
        "config": cfg.to_json(),
        "model": unwrap(model).state_dict(),
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        **state,
    }


def check_run_dir(run_dir: Path, cfg: TrainConfig, resume: bool, force: bool) -> dict[str, Any] | None:
    """Decide what to do with an existing run directory; return the checkpoint to continue from, if any.

    The run's `Stamp` is its configuration: a run with the same one is reused when finished (the
    result is `TrainResult.skipped`) and continued with `resume` when not; another configuration,
    or a checkpoint mitosis cannot read, is refused unless `force` (which starts over).
    """
    ckpt_path = run_dir / CHECKPOINT
    wanted = Stamp.of("train", [], cfg.to_dict())
    if force or not ckpt_path.exists():
        return None
    ckpt = load_checkpoint(ckpt_path)
    check_resume(ckpt_path, ckpt)
    try:
        saved = TrainConfig.from_dict(json.loads(ckpt["config"]))
    except InputError as err:
        raise InputError(f"{ckpt_path}: {err}") from None
    decide(run_dir, wanted, Stamp.of("train", [], saved.to_dict()), exists=True, force=False)
    if not ckpt.get("finished") and not resume:
        raise InputError(f"{run_dir} holds an unfinished run (epoch {ckpt['epoch']})",
                         hint="add --resume to continue it, or --force to start over")
    return ckpt


def _start_run_dir(run_dir: Path, cfg: TrainConfig, model: nn.Module, data: Dataset, resumed: bool) -> None:
    """Make the run directory, write its config.json and, for a new run, the epoch-0 snapshot (`--save-epochs 0`).

    Both loops call it once the run's resumed state is known to fit, so a refused resume leaves the run as it
    was; nothing is cleared here: `--force` over a run trains into a staged folder (`staged_runs`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / CONFIG) as tmp:  # a kill mid-write must not leave half a config.json
        tmp.write_text(cfg.to_json() + "\n")
    if not resumed and 0 in cfg.save_epochs:
        _save_snapshot(run_dir, 0, cfg, model, data)


def _save_progress(run_dir: Path, cfg: TrainConfig, model: nn.Module, data: Dataset, optimizer_state: dict[str, Any], *,
                   epoch: int, step_in_epoch: int, seconds_in_epoch: float, order_rng: torch.Tensor, aug_rng: torch.Tensor,
                   history: list[dict[str, float]], zero_epoch: int | None, finished: bool) -> None:
    """checkpoint.pt: everything a run needs to continue exactly where it is."""
    save_checkpoint(
        run_dir / CHECKPOINT,
        _checkpoint_payload(
            cfg, model, data,
            epoch=epoch, step_in_epoch=step_in_epoch, seconds_in_epoch=seconds_in_epoch,
            optimizer=optimizer_state, order_rng=order_rng, aug_rng=aug_rng,
            history=json.dumps(history), zero_error_epoch=-1 if zero_epoch is None else zero_epoch,
            finished=finished,
        ),
    )


def training_data(cfg: TrainConfig, data_dir: Path | None, download: bool, device: torch.device) -> Dataset:
    """The run's data set on `device`, refused when the network cannot train on it (BatchNorm on one sample)."""
    data = load_dataset(cfg.dataset, data_dir, download, cfg.train_size).to(device)
    if cfg.has_batchnorm and len(data.train_y) < 2:
        raise InputError(f"{cfg.dataset}: {len(data.train_y)} training sample; a network with BatchNorm needs at least 2")
    return data


def folders(paths: Iterable[Path]) -> str:
    """Run folders named in one line: the folder, or how many and the first and last."""
    listed = [str(p) for p in paths]
    return listed[0] if len(listed) == 1 else f"{len(listed)} run folders ({listed[0]} ... {listed[-1]})"


@contextlib.contextmanager
def staged_runs(run_dirs: Mapping[K, Path], force: bool, stop: StopFlag | None) -> Iterator[dict[K, Path]]:
    """Where each run is trained: its own folder, or, with `force` over a folder that holds a run, a hidden folder
    beside it whose entries replace the run's only once the block completes (`io.atomic.staged_entries`).

    Both loops train inside it (one run; seeds together), so a failure, a full disk or a signal before the new
    runs are complete leaves every previous run exactly as it was. Under torchrun only rank 0 writes.
    """
    main_rank = int(os.environ.get("RANK", "0")) == 0
    replaced = {key: d for key, d in run_dirs.items()
                if force and main_rank and any(os.path.lexists(d / name) for name in RUN_ENTRIES)}
    building = dict(run_dirs)
    try:
        with contextlib.ExitStack() as stack:
            for key, run_dir in replaced.items():
                building[key] = stack.enter_context(staged_entries(run_dir, RUN_ENTRIES))
            yield building
    except OutputError as err:  # name the run's own file, not the hidden folder the new run was built in
        text = str(err)
        for key, run_dir in replaced.items():
            text = text.replace(str(building[key]), str(run_dir))
        raise OutputError(text) from err
    except Preempted:
        if not replaced:
            raise
        name = signal.Signals(stop.signal).name if stop is not None and stop.signal else "a signal"
        raise Preempted(f"stopped by {name} before the new run was complete: {folders(replaced.values())} still "
                        f"{'holds' if len(replaced) == 1 else 'hold'} the previous run (--force replaces it only with a "
                        "complete one); rerun the same command to start over") from None


def train_run(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    data_dir: Path | None = None,
    download: bool = False,
    device: torch.device | None = None,
    resume: bool = False,
    force: bool = False,
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
    on_batch: Callable[[int, int, int], None] | None = None,
    stop: StopFlag | None = None,
    command: str = "",
) -> TrainResult:
    """Train `cfg` into `run_dir` (config.json, checkpoint.pt, checkpoints/epoch-NNNN.pt, history.parquet).

    Parameters
    ----------
    cfg : TrainConfig
        Resolved configuration (see `TrainConfig.resolved`).
    run_dir : Path
        Output directory.
    resume : bool
        Continue from `run_dir/checkpoint.pt` if it exists.
    force : bool
        Discard what `run_dir` holds and start over.
    on_epoch : callable, optional
        Called as ``on_epoch(epoch, planned_epochs, history_row)`` after each epoch.
    on_batch : callable, optional
        Called as ``on_batch(epoch, steps_done, steps_per_epoch)`` during an epoch, every `HEARTBEAT_SECONDS`
        (so a log hears from a long epoch).
    stop : StopFlag, optional
        When its signal is set, the loop saves a checkpoint and raises `Preempted`.
    command : str
        The command line that runs this training (`TrainSettings.command`), recorded in history.parquet.
    """
    with staged_runs({0: run_dir}, force, stop) as building:  # --force replaces the run only once the new one is complete
        result = _train(cfg, building[0], data_dir=data_dir, download=download, device=device, resume=resume, force=force,
                        on_epoch=on_epoch, on_batch=on_batch, stop=stop, command=command)
    return dataclasses.replace(result, run_dir=run_dir)


def _train(cfg: TrainConfig, run_dir: Path, *, data_dir: Path | None, download: bool, device: torch.device | None,
           resume: bool, force: bool, on_epoch: Callable[[int, int, dict[str, float]], None] | None,
           on_batch: Callable[[int, int, int], None] | None, stop: StopFlag | None, command: str) -> TrainResult:
    """`train_run` into `run_dir`, the run's folder or the staged one that replaces it (`staged_runs`)."""
    device = device or torch.device("cpu")
    ranks = init_ranks(device)
    if ranks.active and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    ckpt = None if force and not ranks.is_main else check_run_dir(run_dir, cfg, resume, force)
    if ckpt is not None and ckpt.get("finished"):
        history = json.loads(ckpt["history"])
        return TrainResult(run_dir, ckpt["epoch"], _zero_epoch(ckpt), history, skipped=True, device=str(device))
    data = training_data(cfg, data_dir, download, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model_spec, data.input_shape, data.num_classes).to(device)
    channels_last = device.type == "cuda" and len(data.input_shape) == 3
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model.parameters(), cfg)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + _AUG_SEED_OFFSET)
    augment = bool(cfg.augment) and data.augmentable

    n_train = len(data.train_y)
    batch, steps_per_epoch = _steps_per_epoch(n_train, int(cfg.batch_size))
    total_steps = steps_per_epoch * int(cfg.epochs)

    epoch, step_in_epoch, seconds_in_epoch = 0, 0, 0.0
    history: list[dict[str, float]] = []
    zero_epoch: int | None = None
    order_state = order_gen.get_state()
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"{run_dir / CHECKPOINT}: its weights or optimizer state do not fit the run's model "
                             f"({cfg.model_spec.label}): {(str(err).splitlines() or [''])[0][:100]}") from err
        epoch, step_in_epoch = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        seconds_in_epoch = float(ckpt.get("seconds_in_epoch", 0.0))
        order_state = ckpt["order_rng"]
        aug_gen.set_state(ckpt["aug_rng"])
        history = json.loads(ckpt["history"])
        zero_epoch = _zero_epoch(ckpt)
    if ranks.is_main:  # once the resumed state is known to fit: a refused resume leaves the run as it was
        _start_run_dir(run_dir, cfg, model, data, resumed=ckpt is not None)
    model = wrap_model(model, ranks, device)
    if ranks.active:
        torch.distributed.barrier()  # rank 0 has made the directory before anyone goes on

    def save(finished: bool = False) -> None:
        if ranks.is_main:
            _save_progress(run_dir, cfg, model, data, optimizer.state_dict(), epoch=epoch, step_in_epoch=step_in_epoch,
                           seconds_in_epoch=seconds_in_epoch, order_rng=order_state, aug_rng=aug_gen.get_state(),
                           history=history, zero_epoch=zero_epoch, finished=finished)

    with stop.installed() if stop else contextlib.nullcontext():
        while _keep_going(cfg, epoch, history):
            started = heard = time.perf_counter()
            order_gen.set_state(order_state)
            perm = torch.randperm(n_train, generator=order_gen).to(device)
            model.train()
            for step in range(step_in_epoch, steps_per_epoch):
                lr = learning_rate(epoch * steps_per_epoch + step, total_steps, cfg.lr, cfg.lr_min, cfg.schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                idx = perm[step * batch : (step + 1) * batch]
                x, y = data.train_x[idx], data.train_y[idx]
                if augment:  # the whole global batch, so every rank's random stream stays the same
                    x = random_crop_flip(x, aug_gen)
                x, y = ranks.shard(x), ranks.shard(y)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device):
                    loss = F.cross_entropy(model(x).float(), y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if on_batch is not None and time.perf_counter() - heard >= HEARTBEAT_SECONDS:
                    heard = time.perf_counter()
                    on_batch(epoch + 1, step + 1, steps_per_epoch)
                if stop is not None and ranks.any(stop.signal is not None, device):
                    step_in_epoch = step + 1
                    seconds_in_epoch += time.perf_counter() - started
                    save()
                    name = signal.Signals(stop.signal or signal.SIGTERM).name
                    raise Preempted(f"stopped by {name} at epoch {epoch + 1}, step {step_in_epoch}: checkpoint saved in "
                                    f"{run_dir}; rerun the same command with --resume to continue")
            train_loss, train_error = evaluate(model, data.train_x, data.train_y, device, ranks)
            test_loss, test_error = evaluate(model, data.test_x, data.test_y, device, ranks)
            epoch += 1
            step_in_epoch = 0
            order_state = order_gen.get_state()
            lr = learning_rate(epoch * steps_per_epoch - 1, total_steps, cfg.lr, cfg.lr_min, cfg.schedule)
            row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_error": train_error,
                   "test_loss": test_loss, "test_error": test_error,
                   "seconds": seconds_in_epoch + time.perf_counter() - started}
            seconds_in_epoch = 0.0
            history.append(row)
            if zero_epoch is None and train_error == 0:
                zero_epoch = epoch
            if ranks.is_main:
                if epoch in cfg.save_epochs:
                    _save_snapshot(run_dir, epoch, cfg, model, data)
                _write_history(run_dir, cfg, history, zero_epoch, command)
            save()
            if on_epoch is not None:
                on_epoch(epoch, int(cfg.epochs), row)
    save(finished=True)
    return TrainResult(run_dir, epoch, zero_epoch, history, device=str(device))


def _zero_epoch(ckpt: dict[str, Any]) -> int | None:
    value = int(ckpt.get("zero_error_epoch", -1))
    return None if value < 0 else value


def _save_snapshot(run_dir: Path, epoch: int, cfg: TrainConfig, model: nn.Module, data: Dataset) -> None:
    """Weights at `epoch` for training-dynamics analysis: checkpoints/epoch-NNNN.pt."""
    save_checkpoint(run_dir / "checkpoints" / f"epoch-{epoch:04d}.pt",
                    _checkpoint_payload(cfg, model, data, epoch=epoch, finished=True))
