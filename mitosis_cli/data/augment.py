"""On-device augmentation for whole batches: the paper's random crop (reflect padding) and flip."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Randomly crop each (C, H, W) image from its `pad`-reflect-padded copy and flip half horizontally.

    One vectorised gather per batch (no per-sample Python); offsets are drawn from `generator`
    so a resumed run repeats the same augmentations.
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    gen_device = generator.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gen_device).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gen_device).to(images.device)
    flip = torch.rand(n, generator=generator, device=gen_device).to(images.device) < 0.5
    rows = dy[:, None] + torch.arange(h, device=images.device)[None, :]  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=images.device)[None, :]  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.contiguous_format)
