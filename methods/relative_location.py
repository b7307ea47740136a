"""Context prediction: relative patch location (Doersch, Gupta & Efros, "Unsupervised Visual
Representation Learning by Context Prediction", ICCV 2015, arXiv:1505.05192).

A patch from the centre of a 3 x 3 grid and one of its 8 neighbours are embedded by the same
backbone (a late-fusion Siamese network, Sec. 3.1); the concatenated pair is classified into
the 8 relative positions by fully connected layers (fc 4096 -> 8). Gaps between the cells,
jitter and colour dropping (against chromatic-aberration shortcuts, Sec. 3.2) happen in the
`relative_location` recipe.

Batch: `patch_a` (centre), `patch_b` (neighbour), each (B, 3, p, p); `relative_label` (B,) in
0..7 (0 top-left ... 7 bottom-right). Output: `loss`, `relative_location`, `accuracy`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.heads import ProjectionHead
from selfsup.methods.losses import classification_loss
from selfsup.methods.protocol import OptimizerStep

NUM_POSITIONS = 8


@dataclass
class RelativeLocationOptions:
    name: str = "relative_location"
    head_hidden_dim: int = 4096


class RelativeLocation(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, head_hidden_dim: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = ProjectionHead(2 * feature_dim, head_hidden_dim, NUM_POSITIONS)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "patch_a" not in batch:
            raise KeyError("relative_location needs the `relative_location` recipe (batch keys "
                           f"'patch_a', 'patch_b', 'relative_label'); the batch has {sorted(batch)}")
        centre, neighbour = batch["patch_a"], batch["patch_b"]
        labels = batch["relative_label"].long()
        features = self.backbone(torch.cat([centre, neighbour]))  # one pass for both: (2B, D)
        pair = torch.cat(features.chunk(2), dim=1)  # (B, 2D): [centre, neighbour]
        logits = self.classifier(pair)  # (B, 8)
        loss = classification_loss(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "relative_location": loss.detach(), "accuracy": accuracy}

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


def build_relative_location(options: RelativeLocationOptions, backbone: nn.Module,
                            feature_dim: int) -> RelativeLocation:
    return RelativeLocation(backbone, feature_dim, head_hidden_dim=options.head_hidden_dim)
