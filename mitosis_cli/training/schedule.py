"""Learning-rate schedules as pure functions of the step (so a resumed run recomputes them exactly)."""

from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, lr: float, lr_min: float, schedule: str) -> float:
    """Learning rate at optimiser step `step` (0-based) of `total_steps`.

    ``cosine``: lr_min + (lr - lr_min) * (1 + cos(pi * step / total_steps)) / 2, held at lr_min after
    `total_steps` (extra epochs of ``--until-zero-error``); ``constant``: lr.
    """
    if schedule == "constant":
        return lr
    progress = min(step / max(total_steps, 1), 1.0)
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
