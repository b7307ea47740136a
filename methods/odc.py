"""ODC, Online Deep Clustering (Zhan, Xie, Liu, Ong & Loy, "Online Deep Clustering for
Unsupervised Representation Learning", CVPR 2020, arXiv:2006.10645), as OpenSelfSup trains it.

DeepCluster without its epoch-wise alternation: pseudo-labels and centroids evolve with the
network. The backbone's features pass a neck (fc 2048-512, BN, ReLU, dropout, fc 512-256, ReLU)
and a linear classifier over K = 10,000 clusters. Two memories (Sec. 3.2): the sample memory,
one L2-normalized 256-d feature and one label per training image, and the centroid memory.
Each step (Sec. 3.2-3.3, OpenSelfSup's ``ODCMemory`` and ``ODCHook``):

1. the loss is the classifier's cross-entropy against the batch's labels as stored, each sample
   weighted by ``n_c ** -0.5`` (n_c its cluster's size, Sec. 3.3 "loss re-weighting"),
   normalized by the batch's weights;
2. the samples' memory features move towards the new ones, ``f <- normalize((1 - m) f + m x)``,
   m = 0.5, and each sample is relabelled to its nearest centroid (highest inner product);
3. every ``centroid_update_interval`` (10) steps each centroid becomes the mean of its cluster's
   memory features (an empty cluster keeps its centroid);
4. every cluster with fewer than ``min_cluster_size`` (20) samples is dissolved: its samples go to
   the nearest centroid among the other clusters; each cluster so emptied takes over one half of
   the then largest cluster, split by 2-means on its memory features (random halves when 2-means
   cannot split it), and both centroids are recomputed (Sec. 3.3 "dealing with small clusters").

The memories start from a k-means of the whole train split (the official code extracts the
features with a separate pass first). A method sees only the training batches, so here the
first epoch fills the sample memory from each step's own neck features (its loss is 0) and
spherical k-means (`methods.kmeans`, empty clusters split, 20 iterations) runs on it after that
epoch's last step; from then on everything is online. A sample the first epoch did not reach has
no label (it counts nowhere) until it is first seen.

Bounded memory: the sample memory is float16, 1,281,167 x 256 x 2 B = 656 MB for ImageNet, with
10 MB of labels; the centroids (K x 256 float32) 10 MB; the initial k-means and each centroid
update read the memory in chunks (`methods.kmeans`), never copying it.

Under DDP every update works on the features and indices gathered from all ranks, so the
memories are the same on every rank; the initial k-means runs once, on rank 0, and its labels are
broadcast; every later step is deterministic (the 2-means draws from a generator seeded by the
step), and DDP's buffer broadcast keeps rank 0's state authoritative.

Batch: `view_0` (B, 3, S, S), `index` (B,) int64 in [0, memory_bank_size). Output: `loss`,
`cluster_loss`, `label_change` (fraction of the global batch relabelled), `small_clusters` (dissolved
at the last step), `labelled_fraction`, `initialized`.
State: `neck.`, `head.`, `memory` (n, 256) float16, `memory_filled` (n,), `assignments` (n,; -1 =
none), `centroids` (K, 256), `cluster_weights` (K,), `epoch_samples`, `step_samples`, `initialized`,
`small_clusters` (the count dissolved at the last step, logged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods import distributed
from selfsup.methods.protocol import OptimizerStep
from selfsup.methods.kmeans import assign, cluster_sums, spherical_kmeans
from selfsup.methods.losses import cluster_size_weights, weighted_cluster_cross_entropy
from selfsup.methods.npid import batch_indices

HEAD_INIT_STD = 0.01  # OpenSelfSup's ClsHead init_linear="normal"
KMEANS_SEED = 2020  # the initial clustering
SPLIT_SEED = 10645  # the 2-means split at step s draws from SPLIT_SEED + s
SPLIT_ITERATIONS = 10


@dataclass
class ODCOptions:
    name: str = "odc"
    neck_hidden_dim: int = 512
    embedding_dim: int = 256  # the sample memory's features
    num_clusters: int = 10000
    memory_momentum: float = 0.5  # weight of the new feature in the memory update
    min_cluster_size: int = 20  # smaller clusters are dissolved every step
    centroid_update_interval: int = 10  # steps between centroid updates
    kmeans_iterations: int = 20  # the initial clustering
    reweight_power: float = 0.5  # sample weight n_c^-power
    memory_bank_size: int = 0  # rows, one per training image; 0: the training split's size, set by the trainer


def odc_neck(feature_dim: int, hidden_dim: int, output_dim: int) -> nn.Sequential:
    """OpenSelfSup's ``NonLinearNeckV0``: fc-BN(no affine, momentum 0.001)-ReLU-dropout-fc-ReLU."""
    return nn.Sequential(nn.Linear(feature_dim, hidden_dim),
                         nn.BatchNorm1d(hidden_dim, affine=False, momentum=0.001),
                         nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(hidden_dim, output_dim),
                         nn.ReLU(inplace=True))


class ODC(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, *, neck_hidden_dim: int, embedding_dim: int,
                 num_clusters: int, memory_momentum: float, min_cluster_size: int,
                 centroid_update_interval: int, kmeans_iterations: int, reweight_power: float,
                 memory_bank_size: int):
        super().__init__()
        self.backbone = backbone
        self.neck = odc_neck(feature_dim, neck_hidden_dim, embedding_dim)
        self.head = nn.Linear(embedding_dim, num_clusters)
        nn.init.normal_(self.head.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.head.bias)
        self.memory_momentum = memory_momentum
        self.min_cluster_size = min_cluster_size
        self.centroid_update_interval = centroid_update_interval
        self.kmeans_iterations = kmeans_iterations
        self.reweight_power = reweight_power
        size = memory_bank_size
        self.register_buffer("memory", torch.zeros(size, embedding_dim, dtype=torch.float16))
        self.register_buffer("memory_filled", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("assignments", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(num_clusters, embedding_dim))
        self.register_buffer("cluster_weights", torch.zeros(num_clusters))
        self.register_buffer("epoch_samples", torch.zeros((), dtype=torch.long))
        self.register_buffer("step_samples", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("small_clusters", torch.zeros((), dtype=torch.long))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        index = batch_indices(batch, self.memory.shape[0], "odc")
        embedding = self.neck(self.backbone(batch["view_0"]))  # (B, E)
        logits = self.head(embedding)  # (B, K)
        labels = self.assignments[index]  # (B,) as stored: before this step's relabelling
        if bool(self.initialized):
            loss = weighted_cluster_cross_entropy(logits, labels, self.cluster_weights)
        else:
            loss = logits.sum() * 0.0  # every parameter stays in the graph (DDP) until then
        change = torch.zeros((), device=logits.device)
        if self.training:
            change = self._remember(index, embedding.detach())
        return {"loss": loss, "cluster_loss": loss.detach(), "label_change": change,
                "small_clusters": self.small_clusters.float(),
                "labelled_fraction": (labels >= 0).float().mean(), "initialized": self.initialized.float()}

    @torch.no_grad()
    def _remember(self, index: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Memory update and relabelling of the global batch; returns the fraction relabelled."""
        with torch.autocast(embedding.device.type, enabled=False):
            index = distributed.gather_no_grad(index)
            features = F.normalize(distributed.gather_no_grad(embedding.float()), dim=1)  # (B * W, E)
            self.epoch_samples += index.numel()
            self.step_samples += index.numel()
            if bool(self.initialized):
                old = self.memory[index].float()
                mixed = F.normalize((1 - self.memory_momentum) * old + self.memory_momentum * features, dim=1)
                features = torch.where(self.memory_filled[index, None], mixed, features)
            self.memory[index] = features.to(self.memory.dtype)
            self.memory_filled[index] = True
            if not bool(self.initialized):
                return torch.zeros((), device=features.device)
            new_labels = (features @ self.centroids.T).argmax(dim=1)
            change = (new_labels != self.assignments[index]).float().mean()
            self.assignments[index] = new_labels
            return change

    @torch.no_grad()
    def initialize(self) -> None:
        """The first clustering: k-means (rank 0) of the filled memory, labels to every rank."""
        filled = self.memory_filled.nonzero().flatten()
        if filled.numel() == 0:
            return
        labels = torch.zeros(filled.numel(), dtype=torch.long, device=filled.device)
        if distributed.rank() == 0:
            generator = torch.Generator().manual_seed(KMEANS_SEED)
            _, labels = spherical_kmeans(self.memory, self.centroids.shape[0], self.kmeans_iterations,
                                         generator, rows=filled, empty="split")
        distributed.broadcast_(labels)
        self.assignments.fill_(-1)
        self.assignments[filled] = labels
        self.update_centroids()
        self.initialized.fill_(True)

    @torch.no_grad()
    def update_centroids(self, clusters: list[int] | None = None) -> None:
        """Centroids (all, or those of `clusters`) become the mean memory feature of their samples;
        a cluster without samples keeps its centroid."""
        if clusters is None:
            labelled = (self.assignments >= 0).nonzero().flatten()
            sums, sizes = cluster_sums(self.memory, self.assignments[labelled], self.centroids.shape[0],
                                       rows=labelled)
            means = sums / sizes.clamp(min=1)[:, None]
            self.centroids.copy_(torch.where(sizes[:, None] > 0, means, self.centroids))
            return
        for cluster in clusters:
            members = (self.assignments == cluster).nonzero().flatten()
            if members.numel():
                sums, _ = cluster_sums(self.memory, torch.zeros_like(members), 1, rows=members)
                self.centroids[cluster] = sums[0] / members.numel()

    def cluster_sizes(self) -> torch.Tensor:
        """(K,) int64: the samples labelled with each cluster."""
        return torch.bincount(self.assignments[self.assignments >= 0], minlength=self.centroids.shape[0])

    @torch.no_grad()
    def handle_small_clusters(self, seed: int) -> None:
        """Dissolve clusters under min_cluster_size; refill each emptied one by splitting the largest."""
        sizes = self.cluster_sizes()
        small = (sizes < self.min_cluster_size).nonzero().flatten()
        large = (sizes >= self.min_cluster_size).nonzero().flatten()
        self.small_clusters.fill_(small.numel())
        if small.numel() == 0 or large.numel() == 0:
            return
        members = torch.isin(self.assignments, small).nonzero().flatten()
        if members.numel():  # the nearest centroid among the clusters that stay
            self.assignments[members] = large[assign(self.memory, self.centroids[large], rows=members)]
        generator = torch.Generator().manual_seed(SPLIT_SEED + seed)
        for empty in small.tolist():
            self._split_largest_into(empty, generator)

    @torch.no_grad()
    def _split_largest_into(self, empty: int, generator: torch.Generator) -> None:
        """The largest cluster split in two by 2-means; its second half becomes cluster `empty`."""
        largest = int(self.cluster_sizes().argmax())
        members = (self.assignments == largest).nonzero().flatten()
        if members.numel() < 2:
            return
        _, halves = spherical_kmeans(self.memory, 2, SPLIT_ITERATIONS, generator, rows=members, empty="split")
        self.assignments[members[halves == 1]] = empty
        self.update_centroids([largest, empty])

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """First epoch: k-means after its last step. Then: centroids every interval, small clusters, weights."""
        if not bool(self.initialized):
            if int(self.epoch_samples) + int(self.step_samples) > self.memory.shape[0]:
                self.initialize()
        elif (step + 1) % self.centroid_update_interval == 0:
            self.update_centroids()
        if bool(self.initialized):
            self.handle_small_clusters(step)
            self.cluster_weights.copy_(cluster_size_weights(self.cluster_sizes(), self.reweight_power))
        self.step_samples.zero_()

    def teacher_backbone(self) -> None:
        return None

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []

    def optimizer_steps(self) -> list[OptimizerStep]:
        """One optimizer over every trainable parameter, minimising "loss"."""
        return []


def build_odc(options: ODCOptions, backbone: nn.Module, feature_dim: int) -> ODC:
    return ODC(backbone, feature_dim, neck_hidden_dim=options.neck_hidden_dim,
               embedding_dim=options.embedding_dim, num_clusters=options.num_clusters,
               memory_momentum=options.memory_momentum, min_cluster_size=options.min_cluster_size,
               centroid_update_interval=options.centroid_update_interval,
               kmeans_iterations=options.kmeans_iterations, reweight_power=options.reweight_power,
               memory_bank_size=options.memory_bank_size)
