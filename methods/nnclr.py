"""NNCLR: nearest-neighbour contrastive learning (Dwibedi et al., ICCV 2021, arXiv:2104.14548).

Like SimCLR, but the positive of a view's embedding is replaced by its nearest neighbour in a
support set Q, a queue of embeddings from earlier batches (98304 in the paper). With z1, z2 the
projections and p1, p2 the predictions of the two views:
``L = nnclr_loss(NN(z1, Q), p2) / 2 + nnclr_loss(NN(z2, Q), p1) / 2`` (Eq. 2-4, symmetrized),
NN by cosine similarity over the queue, without gradient. After the step the view-0 projections
of the (global) batch are enqueued.

Batch: `view_0`, `view_1`. Output: `loss`, `nnclr`, `neighbour_similarity` (mean cosine of z to
its nearest neighbour). State: `support_set` (Q, D), `support_pointer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods import distributed
from selfsup.methods.heads import PredictionHead, ProjectionHead
from selfsup.methods.losses import nnclr_loss
from selfsup.methods.momentum import enqueue_
from selfsup.methods.protocol import OptimizerStep


@dataclass
class NNCLROptions:
    name: str = "nnclr"
    temperature: float = 0.1
    support_set_size: int = 98304
    projection_hidden_dim: int = 2048
    projection_dim: int = 256
    prediction_hidden_dim: int = 4096


class NNCLR(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, projection_hidden_dim: int,
                 projection_dim: int, prediction_hidden_dim: int, temperature: float,
                 support_set_size: int):
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionHead(feature_dim, projection_hidden_dim, projection_dim,
                                        num_layers=3, last_batch_norm=True)
        self.predictor = PredictionHead(projection_dim, prediction_hidden_dim, projection_dim)
        self.temperature = temperature
        self.register_buffer("support_set",
                             F.normalize(torch.randn(support_set_size, projection_dim), dim=1))
        self.register_buffer("support_pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def nearest_neighbours(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The support-set row nearest (cosine) to each row of z: (B, D) -> (B, D), similarities (B,)."""
        similarity = F.normalize(z, dim=1) @ self.support_set.T  # (B, Q)
        best, index = similarity.max(dim=1)
        return self.support_set[index], best

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z1 = self.projector(self.backbone(batch["view_0"]))  # (B, D)
        z2 = self.projector(self.backbone(batch["view_1"]))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        neighbours_1, similarity_1 = self.nearest_neighbours(z1.detach())
        neighbours_2, similarity_2 = self.nearest_neighbours(z2.detach())
        loss = (nnclr_loss(neighbours_1, p2, self.temperature)
                + nnclr_loss(neighbours_2, p1, self.temperature)) / 2
        if self.training:
            keys = distributed.gather_no_grad(F.normalize(z1.detach(), dim=1))
            enqueue_(self.support_set, self.support_pointer, keys)
        return {"loss": loss, "nnclr": loss.detach(),
                "neighbour_similarity": torch.cat([similarity_1, similarity_2]).mean()}

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Nothing changes between steps."""

    def teacher_backbone(self) -> None:
        return None

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []

    def optimizer_steps(self) -> list[OptimizerStep]:
        """One optimizer over every trainable parameter, minimising "loss"."""
        return []


def build_nnclr(options: NNCLROptions, backbone: nn.Module, feature_dim: int) -> NNCLR:
    return NNCLR(backbone, feature_dim, projection_hidden_dim=options.projection_hidden_dim,
                 projection_dim=options.projection_dim,
                 prediction_hidden_dim=options.prediction_hidden_dim,
                 temperature=options.temperature, support_set_size=options.support_set_size)
