"""SimCLR: a simple framework for contrastive learning (Chen et al., ICML 2020, arXiv:2002.05709).

Two augmented views of each image pass through the backbone and a projection MLP; the NT-Xent
loss pulls the two projections of an image together and pushes apart all other images of the
(global, all-ranks) batch.

Batch: `view_0`, `view_1`, each (B, 3, S, S). Output: `loss` and `nt_xent`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.heads import ProjectionHead
from selfsup.methods.losses import nt_xent
from selfsup.methods.protocol import OptimizerStep


@dataclass
class SimCLROptions:
    name: str = "simclr"
    temperature: float = 0.5
    projection_hidden_dim: int = 2048
    projection_dim: int = 128
    projection_layers: int = 2


class SimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int, output_dim: int,
                 num_layers: int, temperature: float):
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionHead(feature_dim, hidden_dim, output_dim, num_layers=num_layers)
        self.temperature = temperature

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z1 = self.projector(self.backbone(batch["view_0"]))  # (B, output_dim)
        z2 = self.projector(self.backbone(batch["view_1"]))  # (B, output_dim)
        loss = nt_xent(z1, z2, temperature=self.temperature)
        return {"loss": loss, "nt_xent": loss.detach()}

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


def build_simclr(options: SimCLROptions, backbone: nn.Module, feature_dim: int) -> SimCLR:
    return SimCLR(backbone, feature_dim, hidden_dim=options.projection_hidden_dim,
                  output_dim=options.projection_dim, num_layers=options.projection_layers,
                  temperature=options.temperature)
