"""Training: the loop, schedules, zero-training-error stopping, checkpoints and resume."""
