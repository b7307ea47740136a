"""BEiT's block-wise masks (`pipeline.masks.block_mask`, Bao et al. 2022, Algorithm 1) have the
paper's statistics on its 14 x 14 grid: ~40% masked and never more, in blocks of at least 16
patches, and the same seed gives the same mask."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from selfsup.pipeline.masks import block_mask, block_masks

GRID = (14, 14)  # 224 px / 16 px patches
TARGET = round(0.4 * 196)  # 78 patches (the paper masks 75)
SEEDS = range(200)


def component_sizes(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected regions of True cells (breadth-first search)."""
    seen = np.zeros_like(mask)
    sizes = []
    for row, column in zip(*np.nonzero(mask)):
        if seen[row, column]:
            continue
        size, queue = 0, deque([(row, column)])
        seen[row, column] = True
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        sizes.append(size)
    return sizes


def test_block_masks_mask_about_forty_percent_and_never_more():
    counts = np.array([block_mask(seed, GRID, 0.4).sum() for seed in SEEDS])
    assert counts.max() <= TARGET
    assert counts.mean() >= 0.98 * TARGET
    assert (counts == TARGET).mean() > 0.9  # the last block is sized to what is left


@pytest.mark.parametrize("min_patches", [16, 40])
def test_block_masks_come_in_blocks_of_at_least_the_minimum(min_patches):
    masks = [block_mask(seed, GRID, 0.4, min_patches=min_patches) for seed in SEEDS]
    sizes = [component_sizes(mask) for mask in masks]
    assert all(max(found) >= min_patches for found in sizes)  # the first block alone is that large
    in_large = sum(size for found in sizes for size in found if size >= min_patches)
    assert in_large / sum(int(mask.sum()) for mask in masks) > 0.9  # only the last top-up can be smaller
    assert np.mean([len(found) for found in sizes]) < 4  # a few blocks, not salt and pepper


def test_a_larger_minimum_makes_fewer_larger_blocks():
    def blocks(min_patches):
        return np.mean([len(component_sizes(block_mask(seed, GRID, 0.4, min_patches=min_patches))) for seed in SEEDS])
    assert blocks(40) < blocks(16) < blocks(4)


def test_block_masks_are_a_function_of_their_seed():
    seeds = torch.tensor([3, 7, 3])
    masks = block_masks(seeds, GRID, 0.4)
    assert masks.shape == (3, 196) and masks.dtype == torch.bool
    assert torch.equal(masks[0], masks[2]) and not torch.equal(masks[0], masks[1])
    assert torch.equal(masks[1].reshape(GRID), torch.from_numpy(block_mask(7, GRID, 0.4)))
