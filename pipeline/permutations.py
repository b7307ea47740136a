"""Jigsaw permutation sets (Noroozi & Favaro 2016, section 3.2 and algorithm 1).

A jigsaw label is the index of a permutation in a fixed set of K permutations of the 9 tiles.
The set is chosen greedily so that its permutations are far apart in Hamming distance (a
network then cannot tell two labels apart from a few tiles). Our greedy step picks the
candidate whose smallest distance to the chosen set is largest, breaking ties by the largest
summed distance (the paper's criterion) and then by a seeded random order, so the same
(K, seed) always gives the same set. Save the set with the run; `load_permutations` checks it.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import numpy as np

TILES = 9


@functools.lru_cache(maxsize=1)
def all_permutations() -> np.ndarray:
    """Every permutation of 0..8 in lexicographic order: (362880, 9) uint8."""
    flat = np.fromiter(itertools.chain.from_iterable(itertools.permutations(range(TILES))), dtype=np.uint8)
    return flat.reshape(-1, TILES)


def _distances(columns: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """Hamming distance of every candidate to one permutation: columns (9, P) -> (P,) int32."""
    distance = np.zeros(columns.shape[1], dtype=np.uint8)
    for position in range(TILES):
        distance += columns[position] != permutation[position]
    return distance.astype(np.int32)


@functools.lru_cache(maxsize=8)
def _cached_permutations(count: int, seed: int) -> np.ndarray:
    candidates = all_permutations()  # (P, 9)
    columns = np.ascontiguousarray(candidates.T)  # (9, P)
    rng = np.random.default_rng(seed)
    tie_break = rng.random(len(candidates))  # (P,) in [0, 1)
    chosen = [int(rng.integers(len(candidates)))]
    distance = _distances(columns, candidates[chosen[0]])  # (P,)
    smallest, summed = distance.copy(), distance.copy()
    for _ in range(count - 1):
        # the smallest distance dominates (<= 9), then the sum (< 9 x 5000), then the tie-break
        score = smallest * 100_000.0 + summed + tie_break
        index = int(np.argmax(score))
        chosen.append(index)
        distance = _distances(columns, candidates[index])
        np.minimum(smallest, distance, out=smallest)
        summed += distance
    permutations = candidates[chosen].astype(np.int64)
    permutations.setflags(write=False)
    return permutations


def jigsaw_permutations(count: int = 100, seed: int = 0) -> np.ndarray:
    """`count` permutations of 0..8 with maximal Hamming distance: (count, 9) int64, row k = label k."""
    if not 2 <= count <= 5000:
        raise ValueError(f"permutation count must be in [2, 5000], got {count}")
    return _cached_permutations(int(count), int(seed)).copy()


def minimum_hamming_distance(permutations: np.ndarray) -> int:
    """The smallest Hamming distance between two rows of a (K, 9) set."""
    distances = (permutations[:, None, :] != permutations[None, :, :]).sum(axis=2)  # (K, K)
    np.fill_diagonal(distances, TILES + 1)
    return int(distances.min())


def check_permutations(permutations: np.ndarray, source: str = "permutations") -> np.ndarray:
    """A (K, 9) integer array whose rows are distinct permutations of 0..8, else ValueError."""
    permutations = np.asarray(permutations)
    if permutations.ndim != 2 or permutations.shape[1] != TILES or len(permutations) < 2:
        raise ValueError(f"{source}: expected a (K >= 2, 9) array, got shape {permutations.shape}")
    if not np.issubdtype(permutations.dtype, np.integer):
        raise ValueError(f"{source}: expected integers, got {permutations.dtype}")
    if not (np.sort(permutations, axis=1) == np.arange(TILES)).all():
        raise ValueError(f"{source}: every row must be a permutation of 0..8")
    if len(np.unique(permutations, axis=0)) != len(permutations):
        raise ValueError(f"{source}: rows must be distinct")
    return permutations.astype(np.int64)


def save_permutations(path: str | Path, permutations: np.ndarray) -> Path:
    """Write a permutation set as .npy (int64, (K, 9)); returns the path."""
    path = Path(path)
    np.save(path, check_permutations(permutations))
    return path


def load_permutations(path: str | Path) -> np.ndarray:
    """Read a set written by `save_permutations` (or any (K, 9) .npy of permutations)."""
    return check_permutations(np.load(Path(path), allow_pickle=False), str(path))


__all__ = [
    "all_permutations", "check_permutations", "jigsaw_permutations", "load_permutations",
    "minimum_hamming_distance", "save_permutations",
]
