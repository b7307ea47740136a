"""SwAV: swapping assignments between views (Caron et al., "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", NeurIPS 2020, arXiv:2006.09882).

Every crop is embedded (backbone, projector 2048 -> 128, L2-normalized) and scored against K = 3000
learnable prototypes kept on the unit sphere (re-normalized before every step). For each of the
two global crops, online codes Q are computed with Sinkhorn-Knopp (equal partition of the
batch over the prototypes, epsilon 0.05, 3 iterations) and every *other* crop predicts them from
its own scores (swapped prediction, temperature 0.1, Eq. 1-3). With small batches a queue of
earlier embeddings joins the Sinkhorn batch (3840 per global crop, from ``queue_start_fraction``
of training on, used once it is full; Sec. 4.1 / official code). The prototypes are
``last_layer_parameters()``: the trainer keeps them frozen for its first
``trainer.freeze_last_layer_epochs`` (official: ``freeze_prototypes_niters``, about one epoch).

Under DDP the queue holds the gathered embeddings of all ranks (the same on every rank); each
rank passes its own 1/W slice of it to Sinkhorn-Knopp, whose sums are all-reduced, so the
equipartition covers the global batch plus the whole queue, as in the official per-rank queues.

Batch: `view_0`, `view_1` (global crops), then `view_2`, ... (local crops).
Output: `loss`, `swav`, `queue_in_use`.
State: `prototypes`, `queue` (2, L, D), `queue_filled`, `queue_active`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods import distributed
from selfsup.methods.heads import PrototypesHead, ProjectionHead
from selfsup.methods.losses import sinkhorn_knopp, swav_swapped_prediction
from selfsup.methods.multicrop import batch_views, same_size_runs
from selfsup.methods.protocol import OptimizerStep

CROPS_FOR_ASSIGN = (0, 1)


@dataclass
class SwAVOptions:
    name: str = "swav"
    projection_hidden_dim: int = 2048
    projection_dim: int = 128
    num_prototypes: int = 3000
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    queue_size: int = 3840  # per global crop, all ranks together; 0 = no queue
    queue_start_fraction: float = 0.15  # of all steps (epoch 15 of 100)


class SwAV(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, *, projection_hidden_dim: int,
                 projection_dim: int, num_prototypes: int, temperature: float, epsilon: float,
                 sinkhorn_iterations: int, queue_size: int, queue_start_fraction: float):
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionHead(feature_dim, projection_hidden_dim, projection_dim)
        self.prototypes = PrototypesHead(projection_dim, num_prototypes)
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.queue_start_fraction = queue_start_fraction
        self.register_buffer("queue", torch.zeros(len(CROPS_FOR_ASSIGN), queue_size, projection_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_active", torch.tensor(queue_size > 0 and queue_start_fraction <= 0))

    def _local_queue(self, crop: int) -> torch.Tensor:
        """This rank's disjoint 1/W slice of the (global) queue of crop `crop`: (L / W, D)."""
        size, world, rank = self.queue.shape[1], distributed.world_size(), distributed.rank()
        return self.queue[crop, rank * size // world:(rank + 1) * size // world]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.training:
            self.prototypes.normalize_prototypes()
        views = batch_views(batch)
        embeddings = torch.cat([self.projector(self.backbone(run)) for run in same_size_runs(views)])
        embeddings = F.normalize(embeddings, dim=1)  # (V * B, D)
        scores = self.prototypes(embeddings).split(views[0].shape[0])  # V x (B, K)

        use_queue = bool(self.queue_active) and int(self.queue_filled) >= self.queue.shape[1]
        codes = {}
        with torch.no_grad():
            for slot, crop in enumerate(CROPS_FOR_ASSIGN):
                crop_scores = scores[crop].detach()
                if use_queue:
                    queue_scores = self.prototypes(self._local_queue(slot))
                    crop_scores = torch.cat([queue_scores, crop_scores])
                codes[crop] = sinkhorn_knopp(crop_scores, self.epsilon,
                                             self.sinkhorn_iterations)[-views[0].shape[0]:]
            if self.training and bool(self.queue_active):
                self._enqueue(embeddings.detach().split(views[0].shape[0]))
        loss = swav_swapped_prediction(scores, codes, self.temperature)
        return {"loss": loss, "swav": loss.detach(), "queue_in_use": torch.tensor(float(use_queue))}

    @torch.no_grad()
    def _enqueue(self, embeddings_per_view: tuple[torch.Tensor, ...]) -> None:
        """Shift the queue by the global batch and put the newest embeddings first (official)."""
        size = self.queue.shape[1]
        for slot, crop in enumerate(CROPS_FOR_ASSIGN):
            newest = distributed.gather_no_grad(embeddings_per_view[crop])[:size]  # (B * W, D)
            self.queue[slot] = torch.cat([newest, self.queue[slot, :size - newest.shape[0]]])
        self.queue_filled.fill_(min(int(self.queue_filled) + newest.shape[0], size))

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        if self.queue.shape[1] > 0 and step + 1 >= self.queue_start_fraction * total_steps:
            self.queue_active.fill_(True)

    def teacher_backbone(self) -> None:
        return None

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The prototypes, frozen by the trainer at first (Caron et al. 2020, official code)."""
        return [self.prototypes.prototypes.weight]

    def optimizer_steps(self) -> list[OptimizerStep]:
        """One optimizer over every trainable parameter, minimising "loss"."""
        return []


def build_swav(options: SwAVOptions, backbone: nn.Module, feature_dim: int) -> SwAV:
    return SwAV(backbone, feature_dim, projection_hidden_dim=options.projection_hidden_dim,
                projection_dim=options.projection_dim, num_prototypes=options.num_prototypes,
                temperature=options.temperature, epsilon=options.epsilon,
                sinkhorn_iterations=options.sinkhorn_iterations, queue_size=options.queue_size,
                queue_start_fraction=options.queue_start_fraction)
