"""Learning-rate and sparsity-coefficient schedules: pure functions of the step."""

from __future__ import annotations

import math


def lr_factor(
    step: int,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    schedule: str = "linear",
    decay_fraction: float = 0.2,
    end_factor: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at `step` (0-based).

    Linear warm-up from 0 over `warmup_steps`, then constant until the last
    `decay_fraction` of training, then a linear or cosine decay to `end_factor`
    (reached after the final step). `schedule="constant"` never decays.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, round(total_steps * decay_fraction))
    decay_start = max(warmup_steps, total_steps - decay_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / (total_steps - decay_start + 1))
    if schedule == "linear":
        shape = 1.0 - progress
    elif schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown lr schedule {schedule!r}: use constant, linear or cosine")
    return end_factor + (1.0 - end_factor) * shape


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up multiplier from 1/warmup_steps to 1 (for the sparsity coefficient)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)
