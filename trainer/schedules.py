"""Per-step schedules, precomputed as numpy arrays (as in DINO's `cosine_scheduler`).

Every function returns a float64 array with one entry per optimizer step; the trainer reads
`schedule[step]` before each step. Conventions shared by all schedules here:

- A linear warm-up of `warmup_steps` entries goes from `warmup_start_value` (at step 0) towards
  the base value, reaching it at step `warmup_steps` (the first step after the warm-up):
  `value[k] = start + (base - start) * k / warmup_steps`.
- A cosine part of `n` entries goes from the base value (its first entry) to the final value
  (its last entry, i.e. the final value is reached at the last step):
  `value[j] = final + (base - final) * (1 + cos(pi * j / (n - 1))) / 2`. With `n == 1` the
  single entry is the base value.

References: Loshchilov & Hutter 2017 (SGDR, cosine annealing); Goyal et al. 2017 (linear warm-up);
Grill et al. 2020 (BYOL, EMA momentum 0.996 -> 1); Caron et al. 2021 (DINO, teacher temperature
warm-up 0.04 -> 0.07).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "constant_schedule",
    "cosine_schedule",
    "linear_warmup_then_constant",
    "momentum_schedule",
    "teacher_temperature_schedule",
]


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


def constant_schedule(value: float, total_steps: int) -> np.ndarray:
    """(total_steps,) the same value at every step."""
    _check_lengths(total_steps, 0)
    return np.full(total_steps, float(value), dtype=np.float64)


def linear_warmup_then_constant(value: float, total_steps: int, warmup_steps: int = 0,
                                warmup_start_value: float = 0.0) -> np.ndarray:
    """(total_steps,) linear warm-up from `warmup_start_value` to `value`, then `value`."""
    _check_lengths(total_steps, warmup_steps)
    warmup = _linear_warmup(warmup_start_value, value, warmup_steps)
    return np.concatenate([warmup, np.full(total_steps - warmup_steps, float(value), dtype=np.float64)])


def momentum_schedule(base_momentum: float = 0.996, final_momentum: float = 1.0,
                      total_steps: int | None = None) -> np.ndarray:
    """(total_steps,) EMA-teacher momentum, cosine from `base_momentum` to `final_momentum`.

    BYOL (Grill et al. 2020, eq. in sec. 3.2) / DINO:
    `tau[k] = 1 - (1 - base) * (cos(pi * k / K) + 1) / 2` with `K = total_steps - 1`, so
    `tau[0] = base` and the last step uses `final_momentum` (1.0 by default).
    `total_steps` is required (it comes third so that it can also be passed positionally).
    """
    return cosine_schedule(base_momentum, final_momentum, total_steps)


def teacher_temperature_schedule(warmup_temperature: float = 0.04, final_temperature: float = 0.07,
                                 warmup_steps: int | None = None,
                                 total_steps: int | None = None) -> np.ndarray:
    """(total_steps,) DINO teacher temperature: linear warm-up, then constant `final_temperature`.

    Caron et al. 2021 (DINO), sec. 3.1 / appendix: the teacher temperature rises linearly from
    0.04 to 0.07 during the first epochs. Entry k < warmup_steps is
    `warmup + (final - warmup) * k / warmup_steps`; later entries are `final_temperature`.
    Both `warmup_steps` and `total_steps` are required.
    """
    if warmup_steps is None:
        raise ValueError("warmup_steps is required")
    return linear_warmup_then_constant(final_temperature, total_steps, warmup_steps, warmup_temperature)
