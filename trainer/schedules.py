"""Per-step schedules, precomputed as numpy arrays (as in DINO's `cosine_scheduler`).

`cosine_schedule` returns a float64 array with one entry per optimizer step; the trainer reads
`schedule[step]` before each step (learning rate, weight decay). The methods' own schedules
(EMA momentum, DINO's teacher temperature) are held in their buffers and advanced in
`on_step_end`, so that they travel in checkpoints (`methods.momentum.cosine_momentum`).
Conventions:

- A linear warm-up of `warmup_steps` entries goes from `warmup_start_value` (at step 0) towards
  the base value, reaching it at step `warmup_steps` (the first step after the warm-up):
  `value[k] = start + (base - start) * k / warmup_steps`.
- A cosine part of `n` entries goes from the base value (its first entry) to the final value
  (its last entry, i.e. the final value is reached at the last step):
  `value[j] = final + (base - final) * (1 + cos(pi * j / (n - 1))) / 2`. With `n == 1` the
  single entry is the base value.

References: Loshchilov & Hutter 2017 (SGDR, cosine annealing); Goyal et al. 2017 (linear warm-up).
"""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_schedule"]


def _check_lengths(total_steps: int, warmup_steps: int) -> None:
    if total_steps is None:
        raise ValueError("total_steps is required")
    if total_steps <= 0:
        raise ValueError(f"total_steps={total_steps}: a schedule needs at least one step")
    if warmup_steps is None or warmup_steps < 0:
        raise ValueError(f"warmup_steps={warmup_steps}: expected an integer >= 0")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} is larger than total_steps={total_steps}; "
                         "the warm-up must fit inside the schedule")


def _linear_warmup(start_value: float, end_value: float, warmup_steps: int) -> np.ndarray:
    """(warmup_steps,) values from start_value (step 0) towards end_value (reached one step later)."""
    fraction = np.arange(warmup_steps, dtype=np.float64) / max(warmup_steps, 1)
    return start_value + (end_value - start_value) * fraction


def cosine_schedule(base_value: float, final_value: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start_value: float = 0.0) -> np.ndarray:
    """(total_steps,) linear warm-up to `base_value`, then cosine from `base_value` to `final_value`.

    The first `warmup_steps` entries rise linearly from `warmup_start_value`; entry
    `warmup_steps` is `base_value`; the last entry is exactly `final_value` (unless the cosine
    part has a single step, which is then `base_value`). Raises ValueError when
    `total_steps <= 0` or `warmup_steps` is negative or larger than `total_steps`.
    """
    _check_lengths(total_steps, warmup_steps)
    warmup = _linear_warmup(warmup_start_value, base_value, warmup_steps)
    cosine_steps = total_steps - warmup_steps
    if cosine_steps == 0:
        return warmup
    if cosine_steps == 1:
        return np.concatenate([warmup, np.array([base_value], dtype=np.float64)])
    progress = np.arange(cosine_steps, dtype=np.float64) / (cosine_steps - 1)
    cosine = final_value + (base_value - final_value) * (1.0 + np.cos(np.pi * progress)) / 2.0
    return np.concatenate([warmup, cosine])
