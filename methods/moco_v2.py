"""MoCo v2: momentum contrast with an MLP head (He et al., CVPR 2020, arXiv:1911.05722;
Chen, Fan, Girshick & He, "Improved Baselines with Momentum Contrastive Learning",
arXiv:2003.04297).

The query encoder (backbone + 2-layer MLP, no BatchNorm in the head) embeds one view; the key
encoder, an exponential moving average of it (m = 0.999), embeds the other. InfoNCE contrasts
each query with its key against a queue of K = 65536 keys from earlier batches; after the step
the current keys replace the oldest ones (a ring buffer with a pointer).

Under DDP the keys of all ranks are enqueued (so the queue is the same everywhere), and the key
encoder sees the global batch shuffled across ranks ("shuffling BN", Sec. 3.3), so BatchNorm
statistics cannot leak which key belongs to which query (`methods.shuffled_batch_norm`). In one
process there is nothing to shuffle across: BN statistics cover the whole batch, as with one GPU.

Batch: `view_0` (queries), `view_1` (keys), each (B, 3, S, S).
Output: `loss`, `infonce`, `momentum`; with `symmetric` the loss is the mean of both directions.
State: `queue` (K, D), `queue_pointer`, the key encoder `key_backbone` + `key_projector`,
`iteration` (the shuffle seed, so every rank draws the same permutation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods import distributed
from selfsup.methods.heads import ProjectionHead
from selfsup.methods.losses import infonce
from selfsup.methods.momentum import cosine_momentum, ema_update_, enqueue_, frozen_copy
from selfsup.methods.protocol import OptimizerStep
from selfsup.methods.shuffled_batch_norm import shuffled_forward


@dataclass
class MoCoV2Options:
    name: str = "moco_v2"
    temperature: float = 0.2
    queue_size: int = 65536
    momentum: float = 0.999  # key encoder EMA; constant unless final_momentum differs
    final_momentum: float = 0.999
    projection_hidden_dim: int = 2048
    projection_dim: int = 128
    symmetric: bool = False  # the paper's loss is one direction (view_0 queries, view_1 keys)
    shuffle_bn: bool = True  # shuffle the key batch across ranks under DDP


class MoCoV2(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int, output_dim: int,
                 temperature: float, queue_size: int, momentum: float, final_momentum: float,
                 symmetric: bool, shuffle_bn: bool):
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionHead(feature_dim, hidden_dim, output_dim, num_layers=2,
                                        batch_norm=False)
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)
        self.temperature = temperature
        self.base_momentum = momentum
        self.final_momentum = final_momentum
        self.symmetric = symmetric
        self.shuffle_bn = shuffle_bn
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, output_dim), dim=1))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("momentum", torch.tensor(float(momentum)))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _keys(self, images: torch.Tensor) -> torch.Tensor:
        """Key embeddings (B, D), L2-normalized, through the momentum encoder (shuffled under DDP)."""
        def encode(batch: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.key_projector(self.key_backbone(batch)), dim=1)
        if not self.shuffle_bn:
            return encode(images)
        return shuffled_forward(encode, images, seed=int(self.iteration))

    def _direction(self, queries: torch.Tensor, keys: torch.Tensor, negatives: torch.Tensor):
        query = self.projector(self.backbone(queries))  # (B, D)
        return infonce(query, keys, negatives, temperature=self.temperature)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        negatives = self.queue.clone()  # (K, D): the keys of earlier batches
        keys_1 = self._keys(batch["view_1"])
        loss = self._direction(batch["view_0"], keys_1, negatives)
        new_keys = keys_1
        if self.symmetric:
            keys_0 = self._keys(batch["view_0"])
            loss = (loss + self._direction(batch["view_1"], keys_0, negatives)) / 2
            new_keys = torch.cat([keys_1, keys_0])
        if self.training:
            enqueue_(self.queue, self.queue_pointer, distributed.gather_no_grad(new_keys))
        return {"loss": loss, "infonce": loss.detach(), "momentum": self.momentum.clone()}

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        momentum = float(self.momentum)
        ema_update_(self.key_backbone, self.backbone, momentum)
        ema_update_(self.key_projector, self.projector, momentum)
        self.momentum.fill_(cosine_momentum(step + 1, total_steps, self.base_momentum,
                                            self.final_momentum))
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


def build_moco_v2(options: MoCoV2Options, backbone: nn.Module, feature_dim: int) -> MoCoV2:
    return MoCoV2(backbone, feature_dim, hidden_dim=options.projection_hidden_dim,
                  output_dim=options.projection_dim, temperature=options.temperature,
                  queue_size=options.queue_size, momentum=options.momentum,
                  final_momentum=options.final_momentum, symmetric=options.symmetric,
                  shuffle_bn=options.shuffle_bn)
