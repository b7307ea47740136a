"""Supervised pretraining: cross-entropy of a linear classifier on the backbone's features against
the class labels (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016: the
ImageNet-supervised backbone that self-supervised methods are compared with).

Not self-supervised: it needs a labeled dataset (converted from a folder of class folders), and
the trainer refuses one without labels, or with another number of classes than
`num_classes`, before training (`trainer.model.check_labels`). It takes the same augmented views
as SimCLR (the `supervised` recipe: SimCLR's two views plus `label`), so with the same budget it
is the ceiling that a self-supervised method of the same backbone, views and steps is measured
against; each view is classified on its own and the two losses averaged.

Batch: `view_0`, `view_1` (B, 3, S, S) and `label` (B,) int64. Output: `loss`, `cross_entropy`
and `accuracy` (the fraction of views whose top class is the label).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.protocol import OptimizerStep
from selfsup.methods.losses import classification_loss


@dataclass
class SupervisedOptions:
    name: str = "supervised"
    num_classes: int = 1000  # must equal the dataset's number of classes (checked before training)


class Supervised(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"method.num_classes={num_classes}: a classifier needs 2 classes or more")
        self.backbone = backbone
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "label" not in batch:
            raise KeyError("supervised needs class labels (batch key 'label'): convert a folder of class "
                           f"folders; the batch has {sorted(batch)}")
        views = [batch[key] for key in batch if key.startswith("view_")]  # V views of (B, 3, S, S)
        labels = batch["label"].long()                                       # (B,)
        # one forward per view, as SimCLR does (BatchNorm statistics per view)
        logits = torch.cat([self.classifier(self.backbone(view)) for view in views])  # (V * B, C)
        targets = labels.repeat(len(views))                                  # (V * B,)
        loss = classification_loss(logits, targets)
        accuracy = (logits.detach().argmax(dim=1) == targets).float().mean()
        return {"loss": loss, "cross_entropy": loss.detach(), "accuracy": accuracy}

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Nothing to update between steps (no teacher, queue or center)."""

    def teacher_backbone(self) -> None:
        """No momentum teacher: the backbone itself is evaluated."""
        return None

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []

    def optimizer_steps(self) -> list[OptimizerStep]:
        """One optimizer over every trainable parameter, minimising "loss"."""
        return []


def build_supervised(options: SupervisedOptions, backbone: nn.Module, feature_dim: int) -> Supervised:
    return Supervised(backbone, feature_dim, num_classes=options.num_classes)
