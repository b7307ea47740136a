"""Small Fashion-MNIST-like IDX files written by the tests, so that CI without Debian's package
runs the IDX parsing, the conversion and the benchmark on real files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from benchmarks.fashion_mnist import CLASS_NAMES, IDX_FILES


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: 0, 0, type 0x08, ndim, big-endian uint32 dimensions, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_folder(folder: Path, sizes: dict[str, int], compress: bool = True, seed: int = 0,
                     patterned: bool = False) -> dict:
    """The four Fashion-MNIST IDX files with random 28 x 28 images and labels cycling over the 10
    classes in a shuffled order; the arrays written, per split. `patterned`: each image is dim
    noise with a bright 8-row band whose height depends on its class (classes a classifier can
    tell apart), instead of uniform noise."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(seed)
    written = {}
    for split, count in sizes.items():
        images = generator.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = generator.permutation(np.arange(count) % len(CLASS_NAMES)).astype(np.uint8)
        if patterned:
            images //= 4
            for image, label in zip(images, labels):
                image[2 * label:2 * label + 8, 4:24] = 220
        for name, array in zip(IDX_FILES[split], (images, labels)):
            data = idx_bytes(array)
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        written[split] = (images, labels)
    return written
