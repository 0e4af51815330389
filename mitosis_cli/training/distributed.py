"""Scale-out with `torchrun`: DistributedDataParallel over the ranks of one global mini-batch.

Every rank draws the same shuffled global batch (same seed), augments it with the same random stream
and trains on its slice ``batch[rank::world]``; DDP averages the gradients, so with a batch divisible
by the number of ranks and no BatchNorm the updates equal those of one process (up to floating-point
summation order). BatchNorm layers become SyncBatchNorm on CUDA; on the CPU (gloo) each rank
normalises with its own slice's statistics, a documented small difference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch."""
        return tensor[self.rank :: self.world] if self.active else tensor

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        """Sum numbers over the ranks."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is true on any (e.g. a stop signal)."""
        return self.all_sum([float(flag)], device)[0] > 0 if self.active else flag


def init_ranks(device: torch.device) -> Ranks:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank, world, local_rank)


def wrap_model(model: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """DDP wrapper (SyncBatchNorm on CUDA) when running on several ranks; the model itself otherwise."""
    if not ranks.active:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
