"""Barlow Twins: redundancy reduction (Zbontar et al., ICML 2021, arXiv:2103.03230).

Two views pass through the backbone and a 3-layer projector (8192-8192-8192 with BatchNorm);
the loss drives the cross-correlation matrix of the batch-standardized projections towards the
identity: ``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2`` (Eq. 1, lambda = 5e-3),
computed over the global batch under DDP.

Batch: `view_0`, `view_1` (BYOL's asymmetric views). Output: `loss`, `barlow_twins`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.heads import ProjectionHead
from selfsup.methods.losses import barlow_twins
from selfsup.methods.protocol import OptimizerStep


@dataclass
class BarlowTwinsOptions:
    name: str = "barlow_twins"
    lambda_offdiag: float = 0.0051
    projection_hidden_dim: int = 8192
    projection_dim: int = 8192
    projection_layers: int = 3


class BarlowTwins(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int, output_dim: int,
                 num_layers: int, lambda_offdiag: float):
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionHead(feature_dim, hidden_dim, output_dim, num_layers=num_layers)
        self.lambda_offdiag = lambda_offdiag

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z1 = self.projector(self.backbone(batch["view_0"]))  # (B, D)
        z2 = self.projector(self.backbone(batch["view_1"]))
        loss = barlow_twins(z1.float(), z2.float(), lambda_offdiag=self.lambda_offdiag)
        return {"loss": loss, "barlow_twins": loss.detach()}

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


def build_barlow_twins(options: BarlowTwinsOptions, backbone: nn.Module,
                       feature_dim: int) -> BarlowTwins:
    return BarlowTwins(backbone, feature_dim, hidden_dim=options.projection_hidden_dim,
                       output_dim=options.projection_dim, num_layers=options.projection_layers,
                       lambda_offdiag=options.lambda_offdiag)
