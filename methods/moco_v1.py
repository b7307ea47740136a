"""MoCo v1: momentum contrast (He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised
Visual Representation Learning", CVPR 2020, arXiv:1911.05722), the original.

The query encoder is the backbone and one linear layer to 128 dimensions (the ResNet's fc
replaced; no MLP); its output is L2-normalized. The key encoder is a momentum copy of it,
``theta_k <- m theta_k + (1 - m) theta_q`` with m = 0.999 (Eq. 2). InfoNCE (Eq. 1, tau = 0.07)
contrasts each query with the key of the other view of its image against a queue of K = 65536
keys of earlier batches; after the step the current keys replace the oldest ones (Algorithm 1).
The key encoder runs with shuffling BN across ranks (Sec. 3.3, `methods.shuffled_batch_norm`):
under DDP its BatchNorm statistics come from a random sub-batch of the global batch, not the
queries' own; in one process the shuffle is an identity (one rank, nothing to shuffle across).

What MoCo v2 (`moco_v2`, Chen, Fan, Girshick & He 2020) changes, and this keeps as the paper had
it: a linear head, not a 2-layer MLP; tau 0.07, not 0.2; no Gaussian blur: crop scale 0.2-1,
colour jitter (0.4, 0.4, 0.4, 0.4) on every image, grayscale p 0.2, flip (the config's recipe
options), where v2 jitters (0.4, 0.4, 0.4, 0.1) with p 0.8 and blurs with p 0.5. v2 also offers a
cosine momentum schedule and a symmetric loss, which v1 has not. Both shuffle BN alike.

Batch: `view_0` (queries), `view_1` (keys), each (B, 3, S, S).
Output: `loss`, `infonce`, `positive_similarity`.
State: `queue` (K, D), `queue_pointer`, the key encoder `key_backbone` + `key_projector`,
`iteration` (the shuffle seed, so every rank draws the same permutation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods import distributed
from selfsup.methods.protocol import OptimizerStep
from selfsup.methods.losses import infonce
from selfsup.methods.momentum import ema_update_, enqueue_, frozen_copy
from selfsup.methods.shuffled_batch_norm import shuffled_forward


@dataclass
class MoCoV1Options:
    name: str = "moco_v1"
    projection_dim: int = 128  # one linear layer (the ResNet's fc with 128 outputs)
    temperature: float = 0.07
    queue_size: int = 65536
    momentum: float = 0.999  # key encoder EMA, constant
    shuffle_bn: bool = True  # shuffle the key batch across ranks under DDP (no effect in one process)


class MoCoV1(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, *, projection_dim: int, temperature: float,
                 queue_size: int, momentum: float, shuffle_bn: bool):
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Linear(feature_dim, projection_dim)
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)
        self.temperature = temperature
        self.momentum = momentum
        self.shuffle_bn = shuffle_bn
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, projection_dim), dim=1))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def _encode_keys(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_projector(self.key_backbone(images)), dim=1)

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) L2-normalized keys from the momentum encoder (shuffling BN under DDP)."""
        if not self.shuffle_bn:
            return self._encode_keys(images)
        return shuffled_forward(self._encode_keys, images, seed=int(self.iteration))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        query = F.normalize(self.projector(self.backbone(batch["view_0"])), dim=1)  # (B, D)
        keys = self.keys(batch["view_1"])  # (B, D), no gradient
        loss = infonce(query, keys, self.queue.clone(), temperature=self.temperature)
        if self.training:
            enqueue_(self.queue, self.queue_pointer, distributed.gather_no_grad(keys))
        return {"loss": loss, "infonce": loss.detach(),
                "positive_similarity": (query.detach() * keys).sum(dim=1).mean()}

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        ema_update_(self.key_backbone, self.backbone, self.momentum)
        ema_update_(self.key_projector, self.projector, self.momentum)
        self.iteration += 1

    def teacher_backbone(self) -> nn.Module:
        return self.key_backbone

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []

    def optimizer_steps(self) -> list[OptimizerStep]:
        """One optimizer over every trainable parameter, minimising "loss"."""
        return []


def build_moco_v1(options: MoCoV1Options, backbone: nn.Module, feature_dim: int) -> MoCoV1:
    return MoCoV1(backbone, feature_dim, projection_dim=options.projection_dim,
                  temperature=options.temperature, queue_size=options.queue_size,
                  momentum=options.momentum, shuffle_bn=options.shuffle_bn)
