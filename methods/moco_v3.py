"""MoCo v3 (Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers",
ICCV 2021, arXiv:2104.02057).

A base encoder (ViT backbone, 3-layer projector, 2-layer predictor, BatchNorm after every layer
including the outputs) and a momentum encoder (EMA of backbone + projector, momentum 0.99 -> 1 on
a cosine schedule). No queue: the keys are the momentum encoder's embeddings of the other view in
the same (global) batch. The loss is symmetrized, ``ctr(q1, k2) + ctr(q2, k1)``, with
``ctr = 2 tau * CE(q k^T / tau, diagonal)`` (Algorithm 1). For stability with ViTs the patch
projection stays at its random initialization (Sec. 4.2, "random patch projection").

Batch: `view_0`, `view_1` (BYOL's asymmetric views). Output: `loss`, `contrastive`, `momentum`.
State: `momentum_backbone`, `momentum_projector`, `momentum`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.heads import ProjectionHead
from selfsup.methods.losses import moco_v3_loss
from selfsup.methods.momentum import cosine_momentum, ema_update_, frozen_copy
from selfsup.methods.protocol import OptimizerStep


@dataclass
class MoCoV3Options:
    name: str = "moco_v3"
    temperature: float = 0.2  # 0.2 for ViT, 1.0 for ResNet in the paper
    momentum: float = 0.99
    final_momentum: float = 1.0
    projection_hidden_dim: int = 4096
    projection_dim: int = 256
    prediction_hidden_dim: int = 4096
    freeze_patch_embed: bool = True  # ViT only: keep the random patch projection


class MoCoV3(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, projection_hidden_dim: int,
                 projection_dim: int, prediction_hidden_dim: int, temperature: float,
                 momentum: float, final_momentum: float, freeze_patch_embed: bool):
        super().__init__()
        if freeze_patch_embed and backbone.kind == "vit":
            for parameter in backbone.patch_embed.parameters():
                parameter.requires_grad_(False)
        self.backbone = backbone
        self.projector = ProjectionHead(feature_dim, projection_hidden_dim, projection_dim,
                                        num_layers=3, last_batch_norm=True)
        self.predictor = ProjectionHead(projection_dim, prediction_hidden_dim, projection_dim,
                                        num_layers=2, last_batch_norm=True)
        self.momentum_backbone = frozen_copy(backbone)
        self.momentum_projector = frozen_copy(self.projector)
        self.temperature = temperature
        self.base_momentum = momentum
        self.final_momentum = final_momentum
        self.register_buffer("momentum", torch.tensor(float(momentum)))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = (batch["view_0"], batch["view_1"])
        queries = [self.predictor(self.projector(self.backbone(view))) for view in views]
        with torch.no_grad():
            keys = [self.momentum_projector(self.momentum_backbone(view)) for view in views]
        loss = (moco_v3_loss(queries[0], keys[1], self.temperature)
                + moco_v3_loss(queries[1], keys[0], self.temperature))
        return {"loss": loss, "contrastive": loss.detach(), "momentum": self.momentum.clone()}

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        momentum = float(self.momentum)
        ema_update_(self.momentum_backbone, self.backbone, momentum)
        ema_update_(self.momentum_projector, self.projector, momentum)
        self.momentum.fill_(cosine_momentum(step + 1, total_steps, self.base_momentum,
                                            self.final_momentum))

    def teacher_backbone(self) -> nn.Module:
        return self.momentum_backbone

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []

    def optimizer_steps(self) -> list[OptimizerStep]:
        """One optimizer over every trainable parameter, minimising "loss"."""
        return []


def build_moco_v3(options: MoCoV3Options, backbone: nn.Module, feature_dim: int) -> MoCoV3:
    return MoCoV3(backbone, feature_dim, projection_hidden_dim=options.projection_hidden_dim,
                  projection_dim=options.projection_dim,
                  prediction_hidden_dim=options.prediction_hidden_dim,
                  temperature=options.temperature, momentum=options.momentum,
                  final_momentum=options.final_momentum,
                  freeze_patch_embed=options.freeze_patch_embed)
