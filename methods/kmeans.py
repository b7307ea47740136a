"""k-means and PCA whitening on memory banks, in bounded memory (DeepCluster, ODC, DeepCluster-v2).

A bank is one row per training image: for ImageNet-1k (n = 1,281,167) and 256 dimensions in
float16, 656 MB. Nothing here copies it whole: every pass reads it in chunks of rows (optionally
only the rows `rows` names), turns each chunk into float32 (optionally through `transform`, e.g.
PCA-whitening + L2 normalization), and accumulates in float32 (centroid sums) or float64 (second
moments). A chunk holds `rows_per_chunk(k, D)` rows: its float32 scores against k centroids and
its float32 rows together stay under `CHUNK_BYTES` (256 MiB; 6,543 rows for k = 10,000, D = 256).
Beyond the bank, k-means keeps the labels (n int64: 10 MB), the centroids and their sums (k x D
float32: 10 MB each for k = 10,000), so clustering ImageNet needs about 0.3 GB next to the bank.

* ``spherical_kmeans``: Lloyd iterations on the unit sphere (cosine assignment, normalized mean
  centroids), with two ways to treat a cluster left empty: keep its centroid (DeepCluster-v2's
  official code) or split a non-empty cluster in two (DeepCluster, Caron et al. 2018, Sec. 3.3).
* ``assign``: each row's nearest centroid by inner product; ``cluster_sums``: per-cluster sums.
* ``second_moments``, ``principal_axes``, ``pca_whitening``: PCA from (sum, sum of outer
  products, count), the whitening DeepCluster applies before k-means (faiss ``PCAMatrix`` with
  ``eigen_power=-0.5`` in the official code).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

CHUNK_BYTES = 1 << 28  # float32 scores + rows of one chunk
PERTURBATION = 1e-3  # norm of the random offset that splits a centroid in two (unit centroids)
NEGLIGIBLE_VARIANCE = 1e-6  # principal variances below this fraction of the largest are dropped
EmptyClusters = Literal["keep", "split"]
Transform = Callable[[torch.Tensor], torch.Tensor]


def rows_per_chunk(num_centroids: int, width: int, budget: int = CHUNK_BYTES) -> int:
    """Rows whose float32 scores against `num_centroids` and float32 values fit `budget` bytes."""
    return max(1, budget // (4 * (num_centroids + width)))


def _read(points: torch.Tensor, positions: torch.Tensor | slice, rows: torch.Tensor | None,
          transform: Transform | None) -> torch.Tensor:
    """Rows of the clustered set (position p is bank row rows[p], or p) as float32, transformed."""
    block = points[positions] if rows is None else points[rows[positions]]
    block = block.float()
    return block if transform is None else transform(block)


def _count(points: torch.Tensor, rows: torch.Tensor | None) -> int:
    return points.shape[0] if rows is None else rows.numel()


@torch.no_grad()
def assign(points: torch.Tensor, centroids: torch.Tensor, *, rows: torch.Tensor | None = None,
           transform: Transform | None = None, chunk: int | None = None) -> torch.Tensor:
    """(n,) int64: for each row, the centroid (k, D) of highest inner product (cosine on the sphere)."""
    count = _count(points, rows)
    chunk = chunk or rows_per_chunk(centroids.shape[0], centroids.shape[1])
    labels = torch.empty(count, dtype=torch.long, device=points.device)
    for begin in range(0, count, chunk):
        block = _read(points, slice(begin, begin + chunk), rows, transform)
        labels[begin:begin + chunk] = (block @ centroids.T).argmax(dim=1)
    return labels


@torch.no_grad()
def cluster_sums(points: torch.Tensor, labels: torch.Tensor, k: int, *, rows: torch.Tensor | None = None,
                 transform: Transform | None = None, chunk: int | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums (k, D) float32 and sizes (k,) int64 of the rows; a label -1 counts nowhere."""
    count = _count(points, rows)
    first = _read(points, slice(0, 1), rows, transform)
    chunk = chunk or rows_per_chunk(k, first.shape[1])
    sums = torch.zeros(k, first.shape[1], device=points.device)
    for begin in range(0, count, chunk):
        block = _read(points, slice(begin, begin + chunk), rows, transform)
        block_labels = labels[begin:begin + chunk]
        kept = block_labels >= 0
        sums.index_add_(0, block_labels[kept], block[kept])
    sizes = torch.bincount(labels[labels >= 0], minlength=k)
    return sums, sizes


def _pick_cluster_to_split(sizes: torch.Tensor, generator: torch.Generator) -> int | None:
    """A cluster of two or more rows, drawn with probability proportional to (size - 1) (faiss)."""
    weights = (sizes - 1).clamp(min=0).double().cpu()
    if float(weights.sum()) == 0.0:
        return None
    return int(torch.multinomial(weights, 1, generator=generator))


def _offset(width: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    noise = torch.randn(width, generator=generator, dtype=torch.float64)
    return (PERTURBATION * noise / noise.norm()).to(like)


def _move_empty_centroids(centroids: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator) -> None:
    """In place, inside the iterations: each empty cluster takes a randomly chosen non-empty
    cluster's centroid, the two pushed apart by a small random offset; the next assignment splits
    that cluster's rows between them (DeepCluster Sec. 3.3, as faiss's k-means does)."""
    sizes = sizes.clone()
    for empty in (sizes == 0).nonzero().flatten().tolist():
        source = _pick_cluster_to_split(sizes, generator)
        if source is None:
            return
        offset = _offset(centroids.shape[1], generator, centroids)
        centroids[empty] = F.normalize(centroids[source] + offset, dim=0)
        centroids[source] = F.normalize(centroids[source] - offset, dim=0)
        sizes[empty] = sizes[source] // 2
        sizes[source] -= sizes[empty]


def _split_empty_clusters(points: torch.Tensor, rows: torch.Tensor | None, transform: Transform | None,
                          centroids: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                          chunk: int) -> None:
    """In place, after the last assignment: for each empty cluster, a randomly chosen non-empty
    cluster is split in two, its centroid and a perturbed copy, and its rows are reassigned to the
    nearer of the two (DeepCluster Sec. 3.3: "we then reassign the points belonging to the
    non-empty cluster to the two resulting clusters"); rows that all fall on one side (identical
    rows) are split in random halves. Stops when no cluster has two rows (n < k)."""
    sizes = torch.bincount(labels, minlength=centroids.shape[0])
    for empty in (sizes == 0).nonzero().flatten().tolist():
        source = _pick_cluster_to_split(sizes, generator)
        if source is None:
            return
        members = (labels == source).nonzero().flatten()
        offset = _offset(centroids.shape[1], generator, centroids)
        pair = F.normalize(torch.stack([centroids[source] - offset, centroids[source] + offset]), dim=1)
        to_empty = torch.cat([(_read(points, part, rows, transform) @ pair.T).argmax(1) == 1
                              for part in members.split(chunk)])
        if bool(to_empty.all()) or not bool(to_empty.any()):
            to_empty = torch.zeros_like(to_empty)
            half = torch.randperm(members.numel(), generator=generator)[:members.numel() // 2]
            to_empty[half.to(labels.device)] = True
        labels[members[to_empty]] = empty
        for cluster, side in ((source, ~to_empty), (empty, to_empty)):
            total = sum(_read(points, part, rows, transform).sum(0) for part in members[side].split(chunk))
            centroids[cluster] = F.normalize(total, dim=0)
        sizes[empty] = int(to_empty.sum())
        sizes[source] -= sizes[empty]


@torch.no_grad()
def spherical_kmeans(points: torch.Tensor, k: int, iterations: int, generator: torch.Generator,
                     chunk: int | None = None, *, rows: torch.Tensor | None = None,
                     transform: Transform | None = None, empty: EmptyClusters = "keep",
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on the unit sphere: centroids (k, D) float32 and labels (n,) int64.

    points: (N, D') any float dtype, read in chunks (never copied whole); `rows` (n,) int64 picks
    the rows to cluster (all N when None); `transform` maps a float32 chunk (m, D') to the (m, D)
    points actually clustered, which must be L2-normalized (the bank itself when None).
    Centroids start at k distinct random points (drawn with replacement when n < k); each
    iteration assigns every point to the centroid of highest cosine similarity, then moves each
    centroid to the normalized mean of its points. An empty cluster keeps its centroid with
    ``empty="keep"``; with ``empty="split"`` it takes over half of a non-empty cluster, during the
    iterations and once more after the last assignment, so that every cluster ends non-empty
    when n >= k (DeepCluster's remedy, Sec. 3.3). The labels are those of the final assignment.
    """
    count = _count(points, rows)
    if count >= k:
        start = torch.randperm(count, generator=generator)[:k]
    else:
        start = torch.randint(0, count, (k,), generator=generator)
    centroids = _read(points, start.to(points.device), rows, transform).clone()
    chunk = chunk or rows_per_chunk(k, centroids.shape[1])
    for iteration in range(iterations + 1):
        labels = assign(points, centroids, rows=rows, transform=transform, chunk=chunk)
        if iteration == iterations:
            break
        sums, sizes = cluster_sums(points, labels, k, rows=rows, transform=transform, chunk=chunk)
        centroids = torch.where(sizes[:, None] > 0, F.normalize(sums, dim=1), centroids)
        if empty == "split":
            _move_empty_centroids(centroids, sizes, generator)
    if empty == "split":
        _split_empty_clusters(points, rows, transform, centroids, labels, generator, chunk)
    return centroids, labels


@torch.no_grad()
def second_moments(points: torch.Tensor, *, rows: torch.Tensor | None = None, chunk: int | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(sum of rows (D,), sum of their outer products (D, D)), float64, and the number of rows."""
    count, width = _count(points, rows), points.shape[1]
    chunk = chunk or rows_per_chunk(width, width)
    total = torch.zeros(width, dtype=torch.float64, device=points.device)
    outer = torch.zeros(width, width, dtype=torch.float64, device=points.device)
    for begin in range(0, count, chunk):
        block = _read(points, slice(begin, begin + chunk), rows, None)
        total += block.sum(0).double()
        outer += (block.T @ block).double()
    return total, outer, count


def principal_axes(total: torch.Tensor, outer: torch.Tensor, count: int, dim: int,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA from second moments: mean (D,), the top min(dim, D) principal axes as columns
    (D, dim') and their variances (dim',), largest first, float64 (covariance normalized by n)."""
    mean = total / max(count, 1)
    covariance = outer / max(count, 1) - torch.outer(mean, mean)
    variances, axes = torch.linalg.eigh((covariance + covariance.T) / 2)  # ascending
    keep = min(dim, covariance.shape[0])
    return mean, axes.flip(1)[:, :keep], variances.flip(0)[:keep].clamp(min=0.0)


def pca_whitening(total: torch.Tensor, outer: torch.Tensor, count: int, dim: int,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """mean (D,) and matrix (D, dim') float32 such that ``(x - mean) @ matrix`` are the top
    principal components of the rows, each scaled to unit variance (DeepCluster's preprocessing:
    PCA to 256 dimensions, whitened, before L2 normalization). Components whose variance is below
    1e-6 of the largest (numerically absent: fewer rows than dimensions) are set to 0, not blown up.
    """
    mean, axes, variances = principal_axes(total, outer, count, dim)
    present = variances > NEGLIGIBLE_VARIANCE * variances.max().clamp(min=torch.finfo(torch.float64).tiny)
    scale = torch.where(present, variances.clamp(min=torch.finfo(torch.float64).tiny).rsqrt(),
                        torch.zeros_like(variances))
    return mean.float(), (axes * scale).float()
