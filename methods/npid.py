"""NPID: instance discrimination with a memory bank (Wu, Xiong, Yu & Lin, "Unsupervised Feature
Learning via Non-Parametric Instance Discrimination", CVPR 2018, arXiv:1805.01978).

Every training image is its own class. The backbone and a linear layer map an image to a
128-d unit vector f; a memory bank keeps one vector v_i per image (n rows). The probability of
instance i is the non-parametric softmax ``exp(v_i . f / tau) / sum_j exp(v_j . f / tau)``
(tau = 0.07, Eq. 2), approximated with noise-contrastive estimation against M = 4096 bank
entries drawn uniformly (Eq. 5-6; the partition function Z is estimated once, from the first
batch, as in the official code), or computed exactly (``loss: softmax`` with
``num_negatives: 0``: the whole bank) or as a sampled softmax (``softmax`` with M negatives).
After each step the entries of the batch's images move towards their new features:
``v_i <- normalize(0.5 v_i + 0.5 f_i)`` (Sec. 3.2, proximal momentum 0.5).

Needs the sample's index in the training split: `index` (B,) int64 in [0, memory_bank_size).
The M noise entries are drawn once per step and shared by the batch (the official code draws
them per sample; the estimator is the same in expectation).

Batch: `view_0` (one augmented view), `index`. Output: `loss`, `npid`, `positive_similarity`.
State: `memory` (n, D), `normalizer` (Z; 0 until estimated).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods import distributed
from selfsup.methods.losses import npid_nce_loss
from selfsup.methods.protocol import OptimizerStep

LOSSES = ("nce", "softmax")


@dataclass
class NPIDOptions:
    name: str = "npid"
    projection_dim: int = 128
    temperature: float = 0.07
    memory_momentum: float = 0.5
    num_negatives: int = 4096  # noise samples per step; 0 with loss=softmax: the whole bank
    loss: str = "nce"  # nce | softmax
    memory_bank_size: int = 0  # rows, one per training image; 0: the training split's size, set by the trainer


def batch_indices(batch: dict[str, torch.Tensor], size: int, method: str) -> torch.Tensor:
    """The batch's sample indices (B,) int64, checked against a memory bank of `size` rows."""
    if "index" not in batch:
        raise KeyError(f"{method} needs each sample's index in the training split (batch key "
                       f"'index', int64 in [0, memory_bank_size)); the batch has {sorted(batch)}")
    index = batch["index"].long()
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
        raise ValueError(f"{method}: sample index {int(index.max())} is outside the memory bank of "
                         f"{size} rows; set method.memory_bank_size to the number of training samples")
    return index


class NPID(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, *, projection_dim: int,
                 temperature: float, memory_momentum: float, num_negatives: int, loss: str,
                 memory_bank_size: int):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"npid: loss={loss!r}; expected one of {LOSSES}")
        if loss == "nce" and num_negatives <= 0:
            raise ValueError("npid: NCE needs num_negatives > 0")
        self.backbone = backbone
        self.projector = nn.Linear(feature_dim, projection_dim)
        self.temperature = temperature
        self.memory_momentum = memory_momentum
        self.num_negatives = num_negatives
        self.loss_name = loss
        self.register_buffer("memory",
                             F.normalize(torch.randn(memory_bank_size, projection_dim), dim=1))
        self.register_buffer("normalizer", torch.zeros(()))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        index = batch_indices(batch, self.memory.shape[0], "npid")
        features = F.normalize(self.projector(self.backbone(batch["view_0"])), dim=1)  # (B, D)
        positives = self.memory[index]  # (B, D), the images' own entries (no gradient)
        positive_scores = (features * positives).sum(dim=1)  # (B,)
        size = self.memory.shape[0]
        if self.loss_name == "softmax" and self.num_negatives <= 0:
            logits = features @ self.memory.clone().T / self.temperature  # (B, n): Eq. 2 exactly
            loss = F.cross_entropy(logits, index)
        else:
            noise = torch.randint(0, size, (self.num_negatives,), device=features.device)
            negative_scores = features @ self.memory[noise].T  # (B, M)
            if self.loss_name == "softmax":
                logits = torch.cat([positive_scores[:, None], negative_scores], dim=1)
                loss = F.cross_entropy(logits / self.temperature,
                                       torch.zeros_like(index))
            else:
                if float(self.normalizer) == 0.0:  # Z from the first batch (official code)
                    with torch.no_grad():
                        scores = torch.cat([positive_scores[:, None], negative_scores], dim=1)
                        estimate = torch.exp(scores / self.temperature).mean() * size
                        self.normalizer.fill_(float(distributed.all_reduce_mean(estimate)))
                loss = npid_nce_loss(positive_scores, negative_scores, self.normalizer, size,
                                     self.temperature)
        if self.training:
            self._update_memory(index, features.detach())
        return {"loss": loss, "npid": loss.detach(),
                "positive_similarity": positive_scores.detach().mean()}

    @torch.no_grad()
    def _update_memory(self, index: torch.Tensor, features: torch.Tensor) -> None:
        """v_i <- normalize(m v_i + (1 - m) f_i) for the images of the global batch."""
        index = distributed.gather_no_grad(index)
        features = distributed.gather_no_grad(features).to(self.memory.dtype)
        mixed = self.memory[index] * self.memory_momentum + features * (1 - self.memory_momentum)
        self.memory[index] = F.normalize(mixed, dim=1)

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


def build_npid(options: NPIDOptions, backbone: nn.Module, feature_dim: int) -> NPID:
    return NPID(backbone, feature_dim, projection_dim=options.projection_dim,
                temperature=options.temperature, memory_momentum=options.memory_momentum,
                num_negatives=options.num_negatives, loss=options.loss,
                memory_bank_size=options.memory_bank_size)
