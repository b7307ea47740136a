"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020, arXiv:2006.07733).

The online network (backbone, projector 4096 -> 256, predictor 4096 -> 256) predicts the target
network's projection of the other view; the target network is an exponential moving average of
the online backbone and projector with momentum tau from 0.996 to 1 on a cosine schedule per
step (Sec. 3.2). No negatives: the loss is ``||q/|q| - z'/|z'|||^2 = 2 - 2 cos(q, z')``,
symmetrized over the two views (Eq. 2), with a stop-gradient on the target.

Batch: `view_0`, `view_1` (BYOL's asymmetric views: blur p = 1.0 / 0.1, solarize 0 / 0.2).
Output: `loss` (sum of both directions, in [0, 8]), `cosine` (mean cosine similarity),
`momentum`. State: `target_backbone`, `target_projector`, `momentum`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.heads import PredictionHead, ProjectionHead
from selfsup.methods.losses import negative_cosine
from selfsup.methods.momentum import cosine_momentum, ema_update_, frozen_copy
from selfsup.methods.protocol import OptimizerStep


@dataclass
class BYOLOptions:
    name: str = "byol"
    projection_hidden_dim: int = 4096
    projection_dim: int = 256
    prediction_hidden_dim: int = 4096
    momentum: float = 0.996  # tau_base
    final_momentum: float = 1.0


class BYOL(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, projection_hidden_dim: int,
                 projection_dim: int, prediction_hidden_dim: int, momentum: float,
                 final_momentum: float):
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionHead(feature_dim, projection_hidden_dim, projection_dim)
        self.predictor = PredictionHead(projection_dim, prediction_hidden_dim, projection_dim)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.base_momentum = momentum
        self.final_momentum = final_momentum
        self.register_buffer("momentum", torch.tensor(float(momentum)))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = (batch["view_0"], batch["view_1"])
        predictions = [self.predictor(self.projector(self.backbone(view))) for view in views]
        with torch.no_grad():
            targets = [self.target_projector(self.target_backbone(view)) for view in views]
        # negative_cosine = -mean cos; 2 - 2 cos per direction, summed over the two directions
        cosines = [-negative_cosine(predictions[0], targets[1]), -negative_cosine(predictions[1], targets[0])]
        loss = (2 - 2 * cosines[0]) + (2 - 2 * cosines[1])
        return {"loss": loss, "cosine": ((cosines[0] + cosines[1]) / 2).detach(),
                "momentum": self.momentum.clone()}

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        momentum = float(self.momentum)
        ema_update_(self.target_backbone, self.backbone, momentum)
        ema_update_(self.target_projector, self.projector, momentum)
        self.momentum.fill_(cosine_momentum(step + 1, total_steps, self.base_momentum,
                                            self.final_momentum))

    def teacher_backbone(self) -> nn.Module:
        return self.target_backbone

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []

    def optimizer_steps(self) -> list[OptimizerStep]:
        """One optimizer over every trainable parameter, minimising "loss"."""
        return []


def build_byol(options: BYOLOptions, backbone: nn.Module, feature_dim: int) -> BYOL:
    return BYOL(backbone, feature_dim, projection_hidden_dim=options.projection_hidden_dim,
                projection_dim=options.projection_dim,
                prediction_hidden_dim=options.prediction_hidden_dim,
                momentum=options.momentum, final_momentum=options.final_momentum)
