"""DeepCluster-v2 (Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", NeurIPS 2020, arXiv:2006.09882, Sec. 4 and appendix; DeepCluster: Caron et al.,
ECCV 2018).

Pseudo-labels from k-means, refreshed every epoch. A memory bank keeps, for every training
image, the latest embedding (backbone, projector 2048 -> 128, L2-normalized) of each of its two
global crops. At the end of every epoch (every ``memory_bank_size`` samples seen), spherical
k-means (``kmeans_iterations`` Lloyd steps on the unit sphere, cosine assignment) runs on the
bank, ``num_heads`` times with different initializations and on alternating crops; the
centroids become the prototypes and every image gets a new cluster label per head. During the
next epoch every crop is trained to classify its image's label by comparing its embedding with
the centroids (``CE(z . C^T / tau, label)``, tau = 0.1), averaged over heads and crops. As in
the paper the centroids are not learned: they are set by k-means (no classification layer to
re-initialize, which is what removes DeepCluster's instability).

The first epoch fills the bank (the official code does it with a pass before training): its
loss is zero until the first k-means. Needs the sample index: `index` (B,) int64 in
[0, memory_bank_size). Bank, centroids and labels are the same on every rank (embeddings and
indices are gathered), so k-means runs identically everywhere.

Batch: `view_0`, `view_1` (global crops), further views optional (local crops), `index`.
Output: `loss`, `cluster_loss`, `kmeans_runs`, `labelled_fraction`.
State: `memory` (2, n, D), `memory_filled` (n,), `centroids` (heads, K, D), `assignments`
(heads, n; -1 = none), `samples_seen`, `next_kmeans_at`, `kmeans_runs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods import distributed
from selfsup.methods.heads import ProjectionHead
from selfsup.methods.kmeans import spherical_kmeans
from selfsup.methods.multicrop import batch_views, same_size_runs
from selfsup.methods.protocol import OptimizerStep

CROPS_FOR_ASSIGN = (0, 1)


@dataclass
class DeepClusterV2Options:
    name: str = "deepcluster_v2"
    projection_hidden_dim: int = 2048
    projection_dim: int = 128
    num_prototypes: int = 3000  # k of k-means, per head
    num_heads: int = 3  # k-means clusterings per epoch (3 x 3000 in the paper)
    temperature: float = 0.1
    kmeans_iterations: int = 10
    memory_bank_size: int = 0  # rows, one per training image; 0: the training split's size, set by the trainer


def batch_indices(batch: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """The batch's sample indices (B,) int64, checked against a memory bank of `size` rows."""
    if "index" not in batch:
        raise KeyError("deepcluster_v2 needs each sample's index in the training split (batch key "
                       f"'index', int64 in [0, memory_bank_size)); the batch has {sorted(batch)}")
    index = batch["index"].long()
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
        raise ValueError(f"deepcluster_v2: sample index {int(index.max())} is outside the memory "
                         f"bank of {size} rows; set method.memory_bank_size to the number of "
                         "training samples")
    return index


class DeepClusterV2(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, *, projection_hidden_dim: int,
                 projection_dim: int, num_prototypes: int, num_heads: int, temperature: float,
                 kmeans_iterations: int, memory_bank_size: int):
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionHead(feature_dim, projection_hidden_dim, projection_dim)
        self.temperature = temperature
        self.kmeans_iterations = kmeans_iterations
        size = memory_bank_size
        self.register_buffer("memory", torch.zeros(len(CROPS_FOR_ASSIGN), size, projection_dim))
        self.register_buffer("memory_filled", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("centroids", torch.zeros(num_heads, num_prototypes, projection_dim))
        self.register_buffer("assignments", torch.full((num_heads, size), -1, dtype=torch.long))
        self.register_buffer("samples_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("next_kmeans_at", torch.tensor(size, dtype=torch.long))
        self.register_buffer("kmeans_runs", torch.zeros((), dtype=torch.long))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        index = batch_indices(batch, self.memory.shape[1])
        views = batch_views(batch)
        embeddings = torch.cat([self.projector(self.backbone(run)) for run in same_size_runs(views)])
        embeddings = F.normalize(embeddings, dim=1)  # (V * B, D), views in order
        per_view = embeddings.split(views[0].shape[0])

        labels = self.assignments[:, index]  # (heads, B), -1 where no label yet
        labelled = labels >= 0
        loss = embeddings.sum() * 0.0  # keeps every parameter in the graph (DDP) before k-means
        if int(self.kmeans_runs) > 0 and bool(labelled.any()):
            terms = []
            for head in range(self.centroids.shape[0]):
                for view in per_view:
                    logits = view @ self.centroids[head].T / self.temperature  # (B, K)
                    terms.append(F.cross_entropy(logits, labels[head], ignore_index=-1))
            loss = loss + torch.stack(terms).mean()
        if self.training:
            self._remember(index, [per_view[crop].detach() for crop in CROPS_FOR_ASSIGN])
        return {"loss": loss, "cluster_loss": loss.detach(),
                "kmeans_runs": self.kmeans_runs.float(),
                "labelled_fraction": labelled.float().mean()}

    @torch.no_grad()
    def _remember(self, index: torch.Tensor, crops: list[torch.Tensor]) -> None:
        index = distributed.gather_no_grad(index)
        for slot, embedding in enumerate(crops):
            self.memory[slot, index] = distributed.gather_no_grad(embedding).to(self.memory.dtype)
        self.memory_filled[index] = True
        self.samples_seen += index.shape[0]

    @torch.no_grad()
    def cluster(self) -> None:
        """k-means on the memory bank, once per head: new centroids and labels (every rank alike)."""
        filled = self.memory_filled.nonzero().squeeze(1)
        if filled.numel() == 0:
            return
        runs = int(self.kmeans_runs)
        for head in range(self.centroids.shape[0]):
            generator = torch.Generator().manual_seed(runs * 1000 + head)
            points = self.memory[head % len(CROPS_FOR_ASSIGN), filled]
            centroids, labels = spherical_kmeans(points, self.centroids.shape[1],
                                                 self.kmeans_iterations, generator)
            self.centroids[head] = centroids
            self.assignments[head].fill_(-1)
            self.assignments[head, filled] = labels
        self.kmeans_runs += 1

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        if int(self.samples_seen) >= int(self.next_kmeans_at):  # an epoch of samples has passed
            self.cluster()
            while int(self.next_kmeans_at) <= int(self.samples_seen):
                self.next_kmeans_at += self.memory.shape[1]

    def teacher_backbone(self) -> None:
        return None

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []

    def optimizer_steps(self) -> list[OptimizerStep]:
        """One optimizer over every trainable parameter, minimising "loss"."""
        return []


def build_deepcluster_v2(options: DeepClusterV2Options, backbone: nn.Module,
                         feature_dim: int) -> DeepClusterV2:
    return DeepClusterV2(backbone, feature_dim, projection_hidden_dim=options.projection_hidden_dim,
                         projection_dim=options.projection_dim,
                         num_prototypes=options.num_prototypes, num_heads=options.num_heads,
                         temperature=options.temperature,
                         kmeans_iterations=options.kmeans_iterations,
                         memory_bank_size=options.memory_bank_size)
