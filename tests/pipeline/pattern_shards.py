"""Small datasets of known pixel patterns, as real shards, for checking what the graph cuts out.

Each image is its own class, so a batch's `label` says which original a view came from. PNG
keeps the pixels exact (DALI and PIL decode them identically).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from selfsup.pipeline.convert import convert
from selfsup.pipeline.recipes import IMAGENET_MEAN, IMAGENET_STD


def write_pattern_shards(root: Path, images: list[np.ndarray]) -> Path:
    """images: list of (H, W, 3) uint8 -> a converted dataset (train split only) under root/shards."""
    folder = root / "images"
    for index, image in enumerate(images):
        class_folder = folder / f"c{index:03d}"
        class_folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(class_folder / "image.png")
    output = root / "shards"
    convert(folder, output, shard_size="1MB", val_fraction=0.0, workers=1, seed=0, progress=False)
    return output


def noise_images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Uniform noise: every patch of every image is unique."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(count)]


def to_pixels(normalized: torch.Tensor) -> np.ndarray:
    """(..., 3, h, w) float normalized with ImageNet statistics -> (..., h, w, 3) float in [0, 255]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((normalized * std + mean) * 255.0).movedim(-3, -1).numpy()


def first_batch(loader) -> dict[str, torch.Tensor]:
    batch = next(iter(loader))
    loader.close()
    return batch
