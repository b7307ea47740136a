"""DeepCluster (Caron, Bojanowski, Joulin & Douze, "Deep Clustering for Unsupervised Learning of
Visual Features", ECCV 2018, arXiv:1807.05520), on a ResNet as OpenSelfSup trains it.

Every epoch: cluster the features of the whole train split with k-means (PCA-reduced to 256
dimensions, whitened, L2-normalized; k = 10,000 for ImageNet), then train the backbone and a
linear classifier on its features to predict each image's cluster (cross-entropy, Eq. 1). After
each clustering the classifier is re-initialized (N(0, 0.01), bias 0: its rows named clusters
that no longer exist). Against trivial solutions (Sec. 3.3) an empty cluster takes over half of a
non-empty one (`methods.kmeans`, ``empty="split"``), and samples count inversely to their
cluster's size.

Where this differs from the paper, and why:

* Features. The paper extracts them in a separate pass over the train split (center crops, eval
  mode) before each epoch. A method sees only the training batches, so a memory bank is filled
  during the epoch from each step's own backbone features (the training view, train mode,
  detached), as DeepCluster-v2's official code does (and ODC's, after its start); k-means runs on
  it after the epoch's last step (``on_step_end``). The first epoch fills the bank and its loss
  is 0 (the paper clusters the random network's features first).
* PCA in bounded memory. Raw ResNet-50 features (2048-d) would take 5.2 GB in float16 for
  ImageNet (n = 1,281,167); the bank keeps 256-d float16 rows (656 MB): each feature is projected
  on the top-256 principal axes of the previous epoch's features (a streaming (D, D) float64
  second-moment sum: 33.5 MB; a fixed random projection in the first epoch). At the
  epoch's end the bank is PCA-whitened within that subspace (its own 256 x 256 covariance) and
  L2-normalized chunk by chunk as k-means reads it, so nothing the size of the bank is copied
  (k-means itself adds about 0.3 GB: see `methods.kmeans`).
* k-means is the project's spherical k-means (cosine assignment, normalized centroids); the
  official code runs faiss's Euclidean k-means on the same unit vectors, 20 iterations both.
* Uniform sampling over clusters. The paper's sampler draws as many images from every cluster
  each epoch; the DALI reader cannot be re-weighted per epoch by a method, so each sample's loss
  is weighted by ``n_c ** -reweight_power`` (1: the inverse of its cluster's size) and normalized
  by the batch's weights (`losses.weighted_cluster_cross_entropy`): in expectation, the loss under
  the paper's sampler, with weights instead of repeated images.
* The optimizer's momentum for the classifier is not reset with it (the optimizer is the
  trainer's; OpenSelfSup trains the head with momentum 0, so that none carries over). No Sobel
  filter (the paper's and OpenSelfSup's ``with_sobel``): the backbone must take the RGB images
  evaluation and export give it; the recipe's colour jitter and grayscale take the colour cue
  away instead.

Under DDP the features and indices are gathered before they are stored, so the bank and the
moments are the same on every rank; k-means runs once, on rank 0, and its labels and the next
projection are broadcast from rank 0; the classifier is re-initialized from the same seeded
generator everywhere.

Needs the sample index: `index` (B,) int64 in [0, memory_bank_size). An epoch ends after the
step past which one more step would exceed memory_bank_size samples: the trainer's epoch length.

Batch: `view_0` (B, 3, S, S), `index`. Output: `loss`, `cluster_loss`, `kmeans_runs`,
`labelled_fraction`.
State: `head.`, `memory` (n, P) float16, `memory_filled` (n,), `assignments` (n,; -1 = none),
`cluster_weights` (K,), `projection` (D, P), `projection_mean` (D,), `feature_sum`,
`feature_outer`, `feature_count` (the epoch's moments), `epoch_samples`, `step_samples`,
`kmeans_runs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods import distributed
from selfsup.methods.protocol import OptimizerStep
from selfsup.methods.kmeans import pca_whitening, principal_axes, second_moments, spherical_kmeans
from selfsup.methods.losses import cluster_size_weights, weighted_cluster_cross_entropy
from selfsup.methods.npid import batch_indices

HEAD_INIT_STD = 0.01  # OpenSelfSup's ClsHead init_linear="normal"
HEAD_SEED = 20180  # the classifier after clustering r is drawn from seed HEAD_SEED + r
KMEANS_SEED = 1807  # k-means run r starts from seed KMEANS_SEED + r
BASIS_SEED = 5520  # the first epoch's random projection


@dataclass
class DeepClusterOptions:
    name: str = "deepcluster"
    num_clusters: int = 10000  # k; 10,000 for ImageNet (paper Sec. 4.1 and OpenSelfSup)
    pca_dim: int = 256  # features are PCA-reduced to this many dimensions and whitened
    kmeans_iterations: int = 20  # Lloyd iterations per clustering (faiss niter in the official code)
    reweight_power: float = 1.0  # sample weight n_c^-power: 1 = uniform over clusters (the paper's sampler)
    memory_bank_size: int = 0  # rows, one per training image; 0: the training split's size, set by the trainer


def first_projection(feature_dim: int, width: int) -> torch.Tensor:
    """(D, P): the identity when D = P, else a seeded Gaussian projection on a random subspace
    (its columns need not be orthonormal: the whitening before k-means undoes any invertible map
    within the subspace)."""
    if width == feature_dim:
        return torch.eye(feature_dim, device="cpu")
    generator = torch.Generator().manual_seed(BASIS_SEED)
    return torch.randn(feature_dim, width, generator=generator, device="cpu") / feature_dim ** 0.5


class DeepCluster(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, *, num_clusters: int, pca_dim: int,
                 kmeans_iterations: int, reweight_power: float, memory_bank_size: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_clusters)
        self.kmeans_iterations = kmeans_iterations
        self.reweight_power = reweight_power
        width = min(pca_dim, feature_dim)
        size = memory_bank_size
        self.register_buffer("memory", torch.zeros(size, width, dtype=torch.float16))
        self.register_buffer("memory_filled", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("assignments", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("cluster_weights", torch.zeros(num_clusters))
        self.register_buffer("projection", first_projection(feature_dim, width))
        self.register_buffer("projection_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_sum", torch.zeros(feature_dim, dtype=torch.float64))
        self.register_buffer("feature_outer", torch.zeros(feature_dim, feature_dim, dtype=torch.float64))
        self.register_buffer("feature_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch_samples", torch.zeros((), dtype=torch.long))
        self.register_buffer("step_samples", torch.zeros((), dtype=torch.long))
        self.register_buffer("kmeans_runs", torch.zeros((), dtype=torch.long))
        self.reset_head(0)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        index = batch_indices(batch, self.memory.shape[0], "deepcluster")
        features = self.backbone(batch["view_0"])  # (B, D)
        logits = self.head(features)  # (B, K)
        labels = self.assignments[index]  # (B,), -1 before the first clustering
        if int(self.kmeans_runs) > 0:
            loss = weighted_cluster_cross_entropy(logits, labels, self.cluster_weights)
        else:
            loss = logits.sum() * 0.0  # every parameter stays in the graph (DDP) until then
        if self.training:
            self._remember(index, features.detach())
        return {"loss": loss, "cluster_loss": loss.detach(), "kmeans_runs": self.kmeans_runs.float(),
                "labelled_fraction": (labels >= 0).float().mean()}

    @torch.no_grad()
    def _remember(self, index: torch.Tensor, features: torch.Tensor) -> None:
        """Store the global batch's projected features; add them to the epoch's moments."""
        with torch.autocast(features.device.type, enabled=False):
            index = distributed.gather_no_grad(index)
            features = distributed.gather_no_grad(features.float())  # (B * W, D)
            projected = (features - self.projection_mean) @ self.projection  # (B * W, P)
            self.memory[index] = projected.to(self.memory.dtype)
            self.memory_filled[index] = True
            if self.projection.shape[0] > self.projection.shape[1]:  # the next epoch's PCA basis
                self.feature_sum += features.sum(0).double()
                self.feature_outer += (features.T @ features).double()
                self.feature_count += index.numel()
        self.epoch_samples += index.numel()
        self.step_samples += index.numel()

    @torch.no_grad()
    def reset_head(self, run: int) -> None:
        """The classifier drawn afresh, N(0, 0.01) weights and zero bias, the same on every rank."""
        generator = torch.Generator().manual_seed(HEAD_SEED + run)
        weight = torch.randn(self.head.weight.shape, generator=generator, device="cpu") * HEAD_INIT_STD
        self.head.weight.copy_(weight)
        self.head.bias.zero_()

    @torch.no_grad()
    def kmeans_labels(self, filled: torch.Tensor) -> torch.Tensor:
        """(m,) cluster of each filled bank row: PCA-whitened, L2-normalized, spherical k-means."""
        mean, whitening = pca_whitening(*second_moments(self.memory, rows=filled), self.memory.shape[1])

        def whiten(block: torch.Tensor) -> torch.Tensor:
            return F.normalize((block - mean) @ whitening, dim=1)

        generator = torch.Generator().manual_seed(KMEANS_SEED + int(self.kmeans_runs))
        _, labels = spherical_kmeans(self.memory, self.head.out_features, self.kmeans_iterations, generator,
                                     rows=filled, transform=whiten, empty="split")
        return labels

    @torch.no_grad()
    def cluster(self) -> None:
        """k-means on the bank (rank 0), labels to every rank, a new classifier, the next basis."""
        filled = self.memory_filled.nonzero().flatten()
        if filled.numel() == 0:
            return
        labels = torch.zeros(filled.numel(), dtype=torch.long, device=filled.device)
        if distributed.rank() == 0:
            labels = self.kmeans_labels(filled)
        distributed.broadcast_(labels)
        self.assignments.fill_(-1)
        self.assignments[filled] = labels
        sizes = torch.bincount(labels, minlength=self.head.out_features)
        self.cluster_weights.copy_(cluster_size_weights(sizes, self.reweight_power))
        self.kmeans_runs += 1
        self.reset_head(int(self.kmeans_runs))
        self._next_projection()
        self.memory_filled.zero_()  # the next epoch's rows are written in the next basis

    @torch.no_grad()
    def _next_projection(self) -> None:
        """The top-P principal axes of this epoch's features become the next epoch's basis."""
        width = self.projection.shape[1]
        if self.projection.shape[0] == width or int(self.feature_count) == 0:
            return
        mean, axes, _ = principal_axes(self.feature_sum, self.feature_outer, int(self.feature_count), width)
        self.projection.copy_(axes)
        self.projection_mean.copy_(mean)
        distributed.broadcast_(self.projection)
        distributed.broadcast_(self.projection_mean)
        for moment in (self.feature_sum, self.feature_outer, self.feature_count):
            moment.zero_()

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """k-means after the epoch's last step: when one more step of as many samples would not fit."""
        if int(self.epoch_samples) + int(self.step_samples) > self.memory.shape[0]:
            self.cluster()
            self.epoch_samples.zero_()
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


def build_deepcluster(options: DeepClusterOptions, backbone: nn.Module, feature_dim: int) -> DeepCluster:
    return DeepCluster(backbone, feature_dim, num_clusters=options.num_clusters, pca_dim=options.pca_dim,
                       kmeans_iterations=options.kmeans_iterations, reweight_power=options.reweight_power,
                       memory_bank_size=options.memory_bank_size)
