"""Learning-rate schedules as pure functions of the step (so a resumed run recomputes them exactly)."""

from __future__ import annotations

import math

EXTRA_LR_FRACTION = 0.1


def learning_rate(step: int, total_steps: int, lr: float, lr_min: float, schedule: str) -> float:
    """Learning rate at optimiser step `step` (0-based) of a `total_steps` schedule.

    ``cosine``: lr_min + (lr - lr_min) * (1 + cos(pi * step / total_steps)) / 2. ``constant``: lr.
    Steps past the schedule (the extra epochs of ``--until-zero-error``) run at a constant
    max(lr_min, 0.1 * lr): an annealed rate would not move the weights any more, a large one would
    undo the annealing.
    """
    if schedule == "constant":
        return lr
    if step >= total_steps:
        return max(lr_min, EXTRA_LR_FRACTION * lr)
    progress = step / max(total_steps, 1)
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
