"""VICReg: variance-invariance-covariance regularization (Bardes, Ponce & LeCun, ICLR 2022,
arXiv:2105.04906).

Two views pass through the backbone and a 3-layer expander (8192-8192-8192 with BatchNorm). The
loss is ``lambda * invariance + mu * variance + nu * covariance`` with (25, 25, 1): the mean
squared distance between the two embeddings, a hinge keeping every dimension's standard
deviation above 1, and the squared off-diagonal covariances (Eq. 1-6), the last two over the
global batch under DDP.

Batch: `view_0`, `view_1`. Output: `loss`, `invariance`, `variance`, `covariance` (unweighted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.heads import ProjectionHead
from selfsup.methods.losses import vicreg_terms
from selfsup.methods.protocol import OptimizerStep


@dataclass
class VICRegOptions:
    name: str = "vicreg"
    sim_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0
    projection_hidden_dim: int = 8192
    projection_dim: int = 8192
    projection_layers: int = 3


class VICReg(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int, output_dim: int,
                 num_layers: int, sim_weight: float, var_weight: float, cov_weight: float):
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionHead(feature_dim, hidden_dim, output_dim, num_layers=num_layers)
        self.weights = (sim_weight, var_weight, cov_weight)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z1 = self.projector(self.backbone(batch["view_0"]))  # (B, D)
        z2 = self.projector(self.backbone(batch["view_1"]))
        terms = vicreg_terms(z1.float(), z2.float(), *self.weights)
        return {"loss": terms["loss"], "invariance": terms["invariance"].detach(),
                "variance": terms["variance"].detach(), "covariance": terms["covariance"].detach()}

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


def build_vicreg(options: VICRegOptions, backbone: nn.Module, feature_dim: int) -> VICReg:
    return VICReg(backbone, feature_dim, hidden_dim=options.projection_hidden_dim,
                  output_dim=options.projection_dim, num_layers=options.projection_layers,
                  sim_weight=options.sim_weight, var_weight=options.var_weight,
                  cov_weight=options.cov_weight)
