"""Which labeled samples a protocol may learn from: class-balanced subsets drawn by seed.

* `class_balanced_subset(labels, fraction, seed)`: the semi-supervised protocol's subset (the 1% /
  10% ImageNet subsets of SimCLR, Chen et al. 2020, are class-balanced): the same number of
  samples from every class, ``max(1, round(fraction * N / C))``, or all of a smaller class.
  `fraction=1.0` is every sample.
* `low_shot_subset(labels, per_class, draw, seed)`: K samples of every class, draw `draw` of the
  five (or more) independent draws of Goyal et al. 2019's low-shot protocol.

Both depend on the labels, the options and the seed only, never on a backbone: every checkpoint
measured with the same options learns from the same samples. Positions are places in the
split's reading order (`pipeline.subsets.split_labels`), returned sorted.
"""

from __future__ import annotations

import numpy as np

from selfsup.errors import ConfigError, DatasetError


def _class_positions(labels: np.ndarray) -> list[np.ndarray]:
    """The positions of each class 0..C-1 (C: the largest label + 1), ascending."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or len(labels) == 0:
        raise DatasetError(f"expected a non-empty 1-d array of class labels, got shape {labels.shape}")
    if labels.min() < 0:
        raise DatasetError("a class-balanced subset needs labels; this split has unlabeled samples (-1)")
    return [np.flatnonzero(labels == label) for label in range(int(labels.max()) + 1)]


def per_class_count(labels: np.ndarray, fraction: float) -> int:
    """How many samples of each class a `fraction` of the labels is: at least one."""
    return max(1, round(fraction * len(labels) / len(_class_positions(labels))))


def check_fraction(fraction: float) -> float:
    """A label fraction in (0, 1]; a ConfigError naming the value otherwise."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--label-fraction {fraction!r}: expected a fraction of the train labels in (0, 1], "
                          "e.g. 0.01, 0.1 or 1.0")
    return float(fraction)


def class_balanced_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted positions of a class-balanced `fraction` of the samples with these labels."""
    check_fraction(fraction)
    classes = _class_positions(labels)
    if fraction == 1.0:
        return np.arange(len(labels), dtype=np.int64)
    count = per_class_count(labels, fraction)
    generator = np.random.default_rng([seed, round(fraction * 1_000_000)])
    chosen = [generator.permutation(positions)[:count] for positions in classes]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def check_low_shot(labels: np.ndarray, per_class: int, where: str = "the train split") -> None:
    """A ConfigError when `per_class` is not a positive count, or more than the smallest class holds."""
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"--low-shot {per_class!r}: expected a number of samples per class of at least 1")
    counts = [len(positions) for positions in _class_positions(labels)]
    smallest = int(np.argmin(counts))
    if per_class > counts[smallest]:
        raise ConfigError(f"--low-shot {per_class}: class {smallest} of {where} has only {counts[smallest]} "
                          f"samples; choose at most {counts[smallest]} per class")


def low_shot_subset(labels: np.ndarray, per_class: int, draw: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of `per_class` samples of every class: independent draw number `draw`."""
    check_low_shot(labels, per_class)
    generator = np.random.default_rng([seed, per_class, draw])
    chosen = [generator.permutation(positions)[:per_class] for positions in _class_positions(labels)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)
