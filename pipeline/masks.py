"""Patch masks for masked image modeling, as pure functions of the randomness the graph drew.

The DALI graph draws the randomness per sample (uniform noise per patch, or one integer seed per
sample); these functions turn it into boolean masks on the view's patch grid, True = masked,
patches in reading order. Same noise or seed, same mask: a run is reproducible from its seed.

- `random_patch_masks` (MAE, He et al. 2022; SimMIM, Xie et al. 2022): the `count` patches with
  the smallest noise are masked, so exactly `count` per sample (MAE's argsort-of-noise trick).
- `block_mask` (BEiT, Bao et al. 2022, section 2.5 / algorithm 1): rectangles of random area
  (at least `min_patches`) and aspect ratio are added until about ratio x N patches are masked.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def masked_count(patches: int, ratio: float) -> int:
    """How many of `patches` a random mask of `ratio` masks: round(ratio x N)."""
    return int(round(ratio * patches))


def random_patch_masks(noise: torch.Tensor, ratio: float) -> torch.Tensor:
    """noise (B, N) float -> mask (B, N) bool with exactly round(ratio x N) True per row."""
    count = masked_count(noise.shape[1], ratio)
    order = noise.argsort(dim=1)  # (B, N): patch indices, smallest noise first
    mask = torch.zeros(noise.shape, dtype=torch.bool, device=noise.device)
    mask.scatter_(1, order[:, :count], True)
    return mask


def block_mask(seed: int, grid: tuple[int, int], ratio: float, min_patches: int = 16,
               aspect: tuple[float, float] = (0.3, 1 / 0.3), attempts: int = 10) -> np.ndarray:
    """One BEiT block-wise mask: (rows, columns) bool, about ratio x N True (never more).

    Each round proposes a rectangle of area uniform in [min_patches, remaining] patches and
    log-uniform aspect; it is kept when it masks at least one new patch without passing the
    target. Rounds stop when the target is reached or `attempts` proposals in a row fail.
    """
    rng = np.random.default_rng(seed)
    rows, columns = grid
    mask = np.zeros(grid, dtype=bool)  # (rows, columns)
    target = masked_count(rows * columns, ratio)
    low_aspect, high_aspect = math.log(aspect[0]), math.log(aspect[1])
    masked = 0
    while masked < target:
        remaining = target - masked
        added = 0
        for _ in range(attempts):
            area = rng.uniform(min(min_patches, remaining), remaining)
            ratio_hw = math.exp(rng.uniform(low_aspect, high_aspect))
            height = int(round(math.sqrt(area * ratio_hw)))
            width = int(round(math.sqrt(area / ratio_hw)))
            if not (1 <= height <= rows and 1 <= width <= columns):
                continue
            top = int(rng.integers(0, rows - height + 1))
            left = int(rng.integers(0, columns - width + 1))
            block = mask[top:top + height, left:left + width]
            new = height * width - int(block.sum())
            if 0 < new <= remaining:
                block[:] = True
                added = new
                break
        if added == 0:
            break
        masked += added
    return mask


def block_masks(seeds: torch.Tensor, grid: tuple[int, int], ratio: float, min_patches: int = 16,
                aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> torch.Tensor:
    """seeds (B,) int -> masks (B, rows x columns) bool, one `block_mask` per seed."""
    masks = [block_mask(int(seed), grid, ratio, min_patches, aspect).reshape(-1)
             for seed in seeds.tolist()]
    return torch.from_numpy(np.stack(masks)).to(seeds.device)


__all__ = ["block_mask", "block_masks", "masked_count", "random_patch_masks"]
