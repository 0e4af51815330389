"""Many seeds of one configuration trained together, as one stacked model (`mitosis train --seeds`).

The seeds' networks are stacked along a leading axis: every tensor of the state dict gets shape (S, ...).
A step draws each seed's own mini-batch (its own order generator and augmentation stream, as in
`train_run`), runs the S networks at once and sums their mean losses, so each network receives exactly
its own gradient; one optimiser over the stacked tensors then moves each network as its own optimiser
would (SGD with momentum and weight decay, and Adam, act element by element). BatchNorm normalises each
seed's batch with that batch's statistics and keeps running statistics per seed. Every seed starts from
the initialisation a single run with its seed gets (``torch.manual_seed(seed)`` then `build_model`).

Two forward passes read the same stacked tensors:

* MLPs (the demo's networks): batched matrix products (one `baddbmm` per layer for all seeds; one GEMM
  for an input that all seeds share, as in evaluation), BatchNorm of all seeds as one call over S x W
  channels. Each product is laid out as `F.linear` lays out its own, and the backward pass computes
  each gradient in the orientation autograd uses for `F.linear` (`_BatchedLinear`): on the CPU with one
  thread, every seed's weights, losses and errors are then bit for bit those of its own `train_run`
  (measured on this project's machine; tests/training/test_batched.py);
* every other architecture: `torch.func.vmap` over `torch.func.functional_call` (convolutions become
  grouped ones): the same numbers up to floating-point summation order.

Each seed's folder gets what a single `train_run` writes (config.json, checkpoint.pt with its own weights,
optimiser state, random streams and history, checkpoints/, history.parquet), through the same helpers,
so `mitosis train --seed S --resume` can continue any one of them and the batched run resumes them all.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mitosis_cli.data import Dataset
from mitosis_cli.data.augment import random_crop_flip
from mitosis_cli.errors import InputError, Preempted
from mitosis_cli.models.mlp import MLP
from mitosis_cli.models.registry import build_model
from mitosis_cli.runtime import StopFlag
from mitosis_cli.training.config import TrainConfig
from mitosis_cli.training.loop import (
    _AUG_SEED_OFFSET,
    CHECKPOINT,
    EVAL_BATCH,
    HEARTBEAT_SECONDS,
    TrainResult,
    _keep_going,
    _optimizer,
    _save_progress,
    _save_snapshot,
    _start_run_dir,
    _steps_per_epoch,
    _write_history,
    _zero_epoch,
    autocast,
    check_run_dir,
    folders,
    staged_runs,
    training_data,
)
from mitosis_cli.training.schedule import learning_rate

OnSeedsEpoch = Callable[[int, int, Mapping[int, dict[str, float]]], None]


class StackedNetworks:
    """S networks of one architecture as stacked tensors: state-dict names, a leading seed axis.

    Parameters
    ----------
    models : list of nn.Module
        The seeds' networks (same architecture), in seed order; they stay where they are and receive
        the trained weights on `copy_to` (what the checkpoints are written from).
    device : torch.device
        Where the stacked tensors live and the training runs.
    """

    def __init__(self, models: list[nn.Module], device: torch.device) -> None:
        states = [m.state_dict(keep_vars=True) for m in models]
        self.params = {name: torch.stack([s[name].detach() for s in states]).to(device).requires_grad_()
                       for name, _ in models[0].named_parameters()}
        self.buffers = {name: torch.stack([s[name] for s in states]).to(device) for name, _ in models[0].named_buffers()}
        self.template = models[0]
        # what vmap_logits calls for architectures without a batched form of their own (no storage: meta device)
        self._functional = None if isinstance(self.template, MLP) else copy.deepcopy(self.template).to("meta")

    @property
    def size(self) -> int:
        return len(next(iter(self.params.values())))

    def select(self, keep: list[int]) -> None:
        """Keep only the networks at positions `keep` (seeds that finished leave the stack)."""
        index = torch.tensor(keep, device=next(iter(self.params.values())).device)
        self.params = {n: p.detach()[index].requires_grad_() for n, p in self.params.items()}
        self.buffers = {n: b[index] for n, b in self.buffers.items()}

    @torch.no_grad()
    def copy_to(self, model: nn.Module, position: int) -> nn.Module:
        """Write the network at `position` into `model` (a network of the same architecture); return it."""
        stacked = {**self.params, **self.buffers}
        for name, tensor in (*model.named_parameters(), *model.named_buffers()):
            tensor.copy_(stacked[name][position])
        return model

    def logits(self, x: torch.Tensor, train: bool, shared: bool = False) -> torch.Tensor:
        """Logits (S, B, classes) of inputs `x`: (S, B, ...) one batch per network, or with `shared` (B, ...) for all."""
        if self._functional is None:
            return _mlp_logits(self.template, self.params, self.buffers, x, shared, train)
        return vmap_logits(self._functional, self.params, self.buffers, x, shared, train)

    @torch.inference_mode()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[list[float], list[float]]:
        """Per network: mean cross-entropy and error rate in eval mode on (x, y), summed as `loop.evaluate` sums."""
        loss_sum, wrong = [0.0] * self.size, [0.0] * self.size
        for start in range(0, len(y), EVAL_BATCH):
            with autocast(device):
                logits = self.logits(x[start : start + EVAL_BATCH], train=False, shared=True).float()
            target = y[start : start + EVAL_BATCH]
            sums = torch.stack([F.cross_entropy(one, target, reduction="sum") for one in logits]).tolist()
            errors = (logits.argmax(2) != target).sum(1).tolist()
            loss_sum = [total + value for total, value in zip(loss_sum, sums, strict=True)]
            wrong = [total + value for total, value in zip(wrong, errors, strict=True)]
        return [value / len(y) for value in loss_sum], [value / len(y) for value in wrong]


def vmap_logits(module: nn.Module, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor],
                x: torch.Tensor, shared: bool, train: bool) -> torch.Tensor:
    """Any architecture: `module`'s forward with each network's tensors, vectorised by `torch.vmap`.

    BatchNorm in train mode updates the stacked running statistics in place, each network's its own.
    """
    module.train(train)

    def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, (params, buffers), (inputs,))

    return torch.vmap(one, in_dims=(0, 0, None if shared else 0))(dict(params), dict(buffers), x)


class _BatchedLinear(torch.autograd.Function):
    """``x_s @ W_s^T + b_s`` for every network s: x (S, B, in), W (S, out, in), b (S, out) -> (S, B, out).

    The forward pass is `F.linear`'s product, batched; the backward pass computes the weight gradient as
    ``grad_s^T @ x_s`` (autograd's order for `F.linear`, whose weight enters transposed; the batched
    product's own backward would form ``x_s^T @ grad_s`` and round differently) and the bias gradient as
    the sum over the batch of a contiguous gradient, again as for one network.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        return grad_x, torch.bmm(grad.transpose(1, 2), x), grad.sum(1)


def _mlp_logits(mlp: MLP, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor], x: torch.Tensor,
                shared: bool, train: bool) -> torch.Tensor:
    """`MLP.forward` of S stacked networks: activations (S, B, features), logits (S, B, classes).

    A linear layer is `_BatchedLinear`; on an input shared by all networks, one GEMM with the stacked
    weights (B, in) @ (in, S x out). BatchNorm of all networks is one ``F.batch_norm`` over the S x W
    channels of a (B, S x W) matrix, each channel normalised over its own network's batch.
    """
    count = len(params["head.weight"])
    h = x.flatten(1) if shared else x.flatten(2)  # (B, D) or (S, B, D)
    for name, layer in [*(("body." + n, m) for n, m in mlp.body.named_children()), ("head", mlp.head)]:
        if isinstance(layer, nn.Linear):
            weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
            if h.dim() == 2:  # the shared input, one GEMM for all networks; only in evaluation (no gradient)
                h = torch.addmm(bias.reshape(-1), h, weight.reshape(-1, weight.shape[-1]).T).view(len(h), count, -1)
                h = h.transpose(0, 1)
            else:
                h = _BatchedLinear.apply(h, weight, bias)
        elif isinstance(layer, nn.ReLU):
            h = torch.relu(h)
        elif isinstance(layer, nn.BatchNorm1d):
            batch, channels = h.shape[1], h.shape[2]
            h = F.batch_norm(h.transpose(0, 1).reshape(batch, count * channels), buffers[f"{name}.running_mean"].view(-1),
                             buffers[f"{name}.running_var"].view(-1), params[f"{name}.weight"].reshape(-1),
                             params[f"{name}.bias"].reshape(-1), train, float(layer.momentum), layer.eps)
            h = h.view(batch, count, channels).transpose(0, 1)
            if train:
                buffers[f"{name}.num_batches_tracked"].add_(1)
        else:
            raise TypeError(f"no batched form for MLP layer {type(layer).__name__}")
    return h


def _seed_optimizer_state(state: dict[str, Any], position: int) -> dict[str, Any]:
    """The optimiser state dict of the network at `position`: what its own optimiser would hold."""
    return {"state": {key: {name: value[position].clone() if _per_network(value) else value for name, value in entry.items()}
                      for key, entry in state["state"].items()},
            "param_groups": copy.deepcopy(state["param_groups"])}


def _stack_optimizer_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The stacked optimiser state of networks whose own states are `states` (inverse of `_seed_optimizer_state`)."""
    first = states[0]
    return {"state": {key: {name: torch.stack([s["state"][key][name] for s in states]) if _per_network(value) else value
                            for name, value in entry.items()} for key, entry in first["state"].items()},
            "param_groups": first["param_groups"]}


def _select_optimizer_state(state: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    index = torch.tensor(keep)
    return {"state": {key: {name: value[index.to(value.device)] if _per_network(value) else value
                            for name, value in entry.items()} for key, entry in state["state"].items()},
            "param_groups": state["param_groups"]}


def _per_network(value: Any) -> bool:
    """Optimiser state with one entry per network (momentum, Adam's moments), not shared (Adam's step count)."""
    return isinstance(value, torch.Tensor) and value.dim() > 0


@dataclass
class _Seed:
    """One seed's run inside a batched group: its folder, random streams and history."""

    cfg: TrainConfig
    run_dir: Path
    model: nn.Module  # its own network (on the CPU), which checkpoints are written from
    order_gen: torch.Generator
    aug_gen: torch.Generator
    seconds_in_epoch: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    zero_epoch: int | None = None


def train_seeds(
    cfg: TrainConfig,
    run_dirs: Mapping[int, Path],
    *,
    data_dir: Path | None = None,
    download: bool = False,
    device: torch.device | None = None,
    resume: bool = False,
    force: bool = False,
    on_epoch: OnSeedsEpoch | None = None,
    on_batch: Callable[[int, int, int], None] | None = None,
    stop: StopFlag | None = None,
    command: str = "",
) -> dict[int, TrainResult]:
    """Train `cfg` with every seed of `run_dirs` (seed -> run directory) together; the results by seed.

    Each directory ends up as `train_run` with that seed would leave it. `resume`, `force`, `stop` and
    `command` are those of `train_run` (checked for every seed before anything is written); finished
    seeds are reused. Seeds whose checkpoints stand at different points are trained in one group per
    point. `on_epoch(epoch, planned_epochs, rows)` receives each epoch's history row of every seed;
    `on_batch(epoch, steps_done, steps_per_epoch)` is called inside an epoch every `HEARTBEAT_SECONDS`.
    """
    with staged_runs(run_dirs, force, stop) as building:  # --force replaces runs only once the new ones are complete
        results = _train_seeds(cfg, building, data_dir=data_dir, download=download, device=device or torch.device("cpu"),
                               resume=resume, force=force, on_epoch=on_epoch, on_batch=on_batch, stop=stop, command=command)
    return {seed: dataclasses.replace(result, run_dir=run_dirs[seed]) for seed, result in results.items()}


def _train_seeds(cfg: TrainConfig, run_dirs: Mapping[int, Path], *, data_dir: Path | None, download: bool,
                 device: torch.device, resume: bool, force: bool, on_epoch: OnSeedsEpoch | None,
                 on_batch: Callable[[int, int, int], None] | None, stop: StopFlag | None, command: str) -> dict[int, TrainResult]:
    """`train_seeds` into `run_dirs`, the runs' folders or the staged ones that replace them (`staged_runs`).

    Every seed's checkpoint is read and restored into its network before any folder is touched, so a
    refused resume of one seed leaves every run as it was.
    """
    configs = {seed: dataclasses.replace(cfg, seed=seed) for seed in sorted(run_dirs)}
    checkpoints = {seed: check_run_dir(run_dirs[seed], configs[seed], resume, force) for seed in configs}
    results: dict[int, TrainResult] = {}
    groups: dict[tuple[int, int, bool], list[int]] = {}  # (epoch, step, resumed) -> seeds: one stack each
    for seed, ckpt in checkpoints.items():
        if ckpt is not None and ckpt.get("finished"):
            results[seed] = TrainResult(run_dirs[seed], ckpt["epoch"], _zero_epoch(ckpt), json.loads(ckpt["history"]),
                                        skipped=True, device=str(device))
        else:
            position = (0, 0, False) if ckpt is None else (int(ckpt["epoch"]), int(ckpt["step_in_epoch"]), True)
            groups.setdefault(position, []).append(seed)
    if groups:
        data = training_data(cfg, data_dir, download, device)
        restored = {position: _restore({seed: (configs[seed], run_dirs[seed], checkpoints[seed]) for seed in seeds}, data)
                    for position, seeds in groups.items()}
        for runs, _ in restored.values():
            for seed, run in runs.items():
                _start_run_dir(run.run_dir, run.cfg, run.model, data, resumed=checkpoints[seed] is not None)
        for (epoch, step, _), (runs, optimizer_state) in restored.items():
            results.update(_train_group(runs, optimizer_state, data, device, epoch, step, on_epoch, on_batch, stop, command))
    return {seed: results[seed] for seed in sorted(results)}


def _restore(group: Mapping[int, tuple[TrainConfig, Path, dict[str, Any] | None]],
             data: Dataset) -> tuple[dict[int, _Seed], dict[str, Any] | None]:
    """The seeds of one group, each network built from its seed and given its checkpoint's state (refused in one
    line when it does not fit), and the group's stacked optimiser state (None for new runs)."""
    runs: dict[int, _Seed] = {}
    optimizer_states = []
    for seed, (cfg, run_dir, ckpt) in group.items():
        torch.manual_seed(seed)
        model = build_model(cfg.model_spec, data.input_shape, data.num_classes)
        run = _Seed(cfg, run_dir, model, order_gen=torch.Generator().manual_seed(seed),
                    aug_gen=torch.Generator().manual_seed(seed + _AUG_SEED_OFFSET))
        if ckpt is not None:
            try:
                model.load_state_dict(ckpt["model"])
                _optimizer(model.parameters(), cfg).load_state_dict(ckpt["optimizer"])  # fits this network's parameters
                optimizer_states.append(ckpt["optimizer"])
                run.order_gen.set_state(ckpt["order_rng"])
                run.aug_gen.set_state(ckpt["aug_rng"])
                run.seconds_in_epoch = float(ckpt.get("seconds_in_epoch", 0.0))
                run.history = json.loads(ckpt["history"])
            except (KeyError, RuntimeError, TypeError, ValueError) as err:
                reason = (str(err).splitlines() or [type(err).__name__])[0][:120]
                raise InputError(f"{run_dir / CHECKPOINT}: cannot resume from it ({reason})") from err
            run.zero_epoch = _zero_epoch(ckpt)
        runs[seed] = run
    if not optimizer_states:
        return runs, None
    try:
        return runs, _stack_optimizer_states(optimizer_states)
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0][:120]
        raise InputError(f"{folders(run.run_dir for run in runs.values())}: the checkpoints' optimizer states do not "
                         f"stack into one ({reason})", hint="resume the seeds one by one (--seed S --resume)") from err


def _train_group(runs: Mapping[int, _Seed], optimizer_state: dict[str, Any] | None, data: Dataset, device: torch.device,
                 epoch: int, step_in_epoch: int, on_epoch: OnSeedsEpoch | None,
                 on_batch: Callable[[int, int, int], None] | None, stop: StopFlag | None, command: str) -> dict[int, TrainResult]:
    """Train seeds that stand at the same point (`epoch`, `step_in_epoch`) as one stacked model."""
    cfg = next(iter(runs.values())).cfg
    net = StackedNetworks([run.model for run in runs.values()], device)
    optimizer = _optimizer(net.params.values(), cfg)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    active = list(runs)  # the seeds in the stack, in stack order
    augment = bool(cfg.augment) and data.augmentable
    n_train = len(data.train_y)
    batch, steps_per_epoch = _steps_per_epoch(n_train, int(cfg.batch_size))
    total_steps = steps_per_epoch * int(cfg.epochs)
    inputs = data.train_x.flatten(1)
    results: dict[int, TrainResult] = {}

    def save(seeds: list[int], finished: bool = False) -> None:
        state = optimizer.state_dict()
        for seed in seeds:
            run, position = runs[seed], active.index(seed)
            _save_progress(run.run_dir, run.cfg, net.copy_to(run.model, position), data, _seed_optimizer_state(state, position),
                           epoch=epoch, step_in_epoch=step_in_epoch, seconds_in_epoch=run.seconds_in_epoch,
                           order_rng=run.order_gen.get_state(), aug_rng=run.aug_gen.get_state(), history=run.history,
                           zero_epoch=run.zero_epoch, finished=finished)

    def retire(done: list[int]) -> None:
        """Seeds whose training is over: their results, and the stack without them."""
        nonlocal optimizer
        for seed in done:
            run = runs[seed]
            results[seed] = TrainResult(run.run_dir, epoch, run.zero_epoch, run.history, device=str(device))
        keep = [active.index(seed) for seed in active if seed not in done]
        if keep and done:
            state = _select_optimizer_state(optimizer.state_dict(), keep)
            net.select(keep)
            optimizer = _optimizer(net.params.values(), cfg)
            optimizer.load_state_dict(state)
        active[:] = [seed for seed in active if seed not in done]

    with stop.installed() if stop else contextlib.nullcontext():
        done = [seed for seed in active if not _keep_going(cfg, epoch, runs[seed].history)]  # stopped just before the end
        save(done, finished=True)
        retire(done)
        while active:
            started = heard = time.perf_counter()
            order_states = [runs[seed].order_gen.get_state() for seed in active]  # the epoch's start, as checkpoints hold it
            perms = torch.stack([torch.randperm(n_train, generator=runs[seed].order_gen) for seed in active]).to(device)
            for step in range(step_in_epoch, steps_per_epoch):
                lr = learning_rate(epoch * steps_per_epoch + step, total_steps, cfg.lr, cfg.lr_min, cfg.schedule)
                for param_group in optimizer.param_groups:
                    param_group["lr"] = lr
                idx = perms[:, step * batch : (step + 1) * batch]
                x = inputs.index_select(0, idx.flatten()).view(*idx.shape, *data.input_shape)  # rows: faster than x[idx]
                y = data.train_y[idx]
                if augment:
                    x = torch.stack([random_crop_flip(x[i], runs[seed].aug_gen) for i, seed in enumerate(active)])
                with autocast(device):
                    logits = net.logits(x, train=True).float()
                losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none", label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                losses.view(y.shape).mean(1).sum().backward()  # the sum of the networks' own mean losses: each its own gradient
                optimizer.step()
                if on_batch is not None and time.perf_counter() - heard >= HEARTBEAT_SECONDS:
                    heard = time.perf_counter()
                    on_batch(epoch + 1, step + 1, steps_per_epoch)
                if stop is not None and stop.signal is not None:
                    step_in_epoch = step + 1
                    for seed, state in zip(active, order_states, strict=True):
                        runs[seed].seconds_in_epoch += time.perf_counter() - started
                        runs[seed].order_gen.set_state(state)
                    save(active)
                    name = signal.Signals(stop.signal).name
                    raise Preempted(f"stopped by {name} at epoch {epoch + 1}, step {step_in_epoch}: checkpoints saved in "
                                    f"{folders(runs[s].run_dir for s in active)}; rerun the same command with --resume "
                                    "to continue")
            train_loss, train_error = net.evaluate(data.train_x, data.train_y, device)
            test_loss, test_error = net.evaluate(data.test_x, data.test_y, device)
            epoch += 1
            step_in_epoch = 0
            lr = learning_rate(epoch * steps_per_epoch - 1, total_steps, cfg.lr, cfg.lr_min, cfg.schedule)
            rows, elapsed = {}, time.perf_counter() - started
            for position, seed in enumerate(active):
                run = runs[seed]
                rows[seed] = {"epoch": epoch, "lr": lr, "train_loss": train_loss[position],
                              "train_error": train_error[position], "test_loss": test_loss[position],
                              "test_error": test_error[position], "seconds": run.seconds_in_epoch + elapsed}
                run.seconds_in_epoch = 0.0
                run.history.append(rows[seed])
                if run.zero_epoch is None and train_error[position] == 0:
                    run.zero_epoch = epoch
                if epoch in run.cfg.save_epochs:
                    _save_snapshot(run.run_dir, epoch, run.cfg, net.copy_to(run.model, position), data)
                _write_history(run.run_dir, run.cfg, run.history, run.zero_epoch, command)
            done = [seed for seed in active if not _keep_going(cfg, epoch, runs[seed].history)]
            save([seed for seed in active if seed not in done])
            save(done, finished=True)
            if on_epoch is not None:
                on_epoch(epoch, int(cfg.epochs), rows)
            retire(done)
    return results

