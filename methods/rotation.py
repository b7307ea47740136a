"""RotNet: predicting image rotations (Gidaris, Singh & Komodakis, "Unsupervised Representation
Learning by Predicting Image Rotations", ICLR 2018, arXiv:1803.07728).

Each image is rotated by 0, 90, 180 and 270 degrees; the network classifies which rotation it
sees (4-way cross-entropy). Recognizing "up" needs the object's shape and pose. As in the paper,
all four rotations of every image are in the same batch (the `rotation` recipe's mode "all",
which the paper found better than one random rotation per image, Sec. 3.2).

Batch (the `rotation` recipe): `view_0` (B, 4, 3, S, S) with `rotation_label` (B, 4), or in mode
"one" `view_0` (B, 3, S, S) with `rotation_label` (B,). Output: `loss`, `rotation`, `accuracy`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.heads import ProjectionHead
from selfsup.methods.losses import classification_loss
from selfsup.methods.protocol import OptimizerStep

NUM_ROTATIONS = 4


@dataclass
class RotationOptions:
    name: str = "rotation"
    head_hidden_dim: int = 0  # 0: a linear classifier on the backbone features


class Rotation(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, head_hidden_dim: int):
        super().__init__()
        self.backbone = backbone
        layers = 2 if head_hidden_dim > 0 else 1
        self.classifier = ProjectionHead(feature_dim, head_hidden_dim, NUM_ROTATIONS, num_layers=layers)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "rotation_label" not in batch:
            raise KeyError("rotation needs the `rotation` recipe (batch key 'rotation_label'); the "
                           f"batch has {sorted(batch)}")
        images = batch["view_0"]
        labels = batch["rotation_label"].long().reshape(-1)  # (B * 4,) or (B,)
        images = images.reshape(-1, *images.shape[-3:])  # (B * 4, 3, S, S): rotations in order
        logits = self.classifier(self.backbone(images))  # (B * 4, 4)
        loss = classification_loss(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "rotation": loss.detach(), "accuracy": accuracy}

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


def build_rotation(options: RotationOptions, backbone: nn.Module, feature_dim: int) -> Rotation:
    return Rotation(backbone, feature_dim, head_hidden_dim=options.head_hidden_dim)
