"""SimSiam: simple Siamese representation learning (Chen & He, CVPR 2021, arXiv:2011.10566).

Both views pass through the same backbone and projector (3 layers of 2048 with BatchNorm, the
output BN without affine parameters); a bottleneck predictor (2048 -> 512 -> 2048) maps one
view's projection to the other's. The loss is the symmetrized negative cosine similarity with a
stop-gradient on the target branch (Eq. 1-2): ``L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2``. The
stop-gradient is what prevents collapse (Sec. 4.1); there is no momentum encoder and no negative.
The predictor's learning rate stays at the base value while the rest follows the schedule, so it
keeps adapting to the latest representations (Sec. 4.2, Table 1c: 68.1% vs 67.7% with the decay);
`fixed_lr_parameters()` names them to the trainer (`fixed_predictor_lr: false` decays them too).

Batch: `view_0`, `view_1`. Output: `loss` (in [-1, 1]), `negative_cosine`,
`representation_std` (std of the normalized projections per dimension: ~1/sqrt(D) when healthy,
0 when collapsed, Sec. 4.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods.heads import PredictionHead, ProjectionHead
from selfsup.methods.losses import negative_cosine
from selfsup.methods.protocol import OptimizerStep


@dataclass
class SimSiamOptions:
    name: str = "simsiam"
    projection_hidden_dim: int = 2048
    projection_dim: int = 2048
    projection_layers: int = 3
    prediction_hidden_dim: int = 512
    fixed_predictor_lr: bool = True


class SimSiam(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, projection_hidden_dim: int,
                 projection_dim: int, projection_layers: int, prediction_hidden_dim: int,
                 fixed_predictor_lr: bool = True):
        super().__init__()
        self.fixed_predictor_lr = fixed_predictor_lr
        self.backbone = backbone
        self.projector = ProjectionHead(feature_dim, projection_hidden_dim, projection_dim,
                                        num_layers=projection_layers, last_batch_norm=True)
        self.predictor = PredictionHead(projection_dim, prediction_hidden_dim, projection_dim)

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        """The parameters whose learning rate the trainer keeps constant: the predictor's."""
        return list(self.predictor.parameters()) if self.fixed_predictor_lr else []

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z1 = self.projector(self.backbone(batch["view_0"]))  # (B, D)
        z2 = self.projector(self.backbone(batch["view_1"]))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2  # targets detached inside
        spread = F.normalize(z1.detach(), dim=1).std(dim=0).mean()
        return {"loss": loss, "negative_cosine": loss.detach(), "representation_std": spread}

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Nothing changes between steps."""

    def teacher_backbone(self) -> None:
        return None

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []

    def optimizer_steps(self) -> list[OptimizerStep]:
        """One optimizer over every trainable parameter, minimising "loss"."""
        return []


def build_simsiam(options: SimSiamOptions, backbone: nn.Module, feature_dim: int) -> SimSiam:
    return SimSiam(backbone, feature_dim, projection_hidden_dim=options.projection_hidden_dim,
                   projection_dim=options.projection_dim,
                   projection_layers=options.projection_layers,
                   prediction_hidden_dim=options.prediction_hidden_dim,
                   fixed_predictor_lr=options.fixed_predictor_lr)
