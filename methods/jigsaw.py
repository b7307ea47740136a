"""Jigsaw puzzles (Noroozi & Favaro, "Unsupervised Learning of Visual Representations by
Solving Jigsaw Puzzles", ECCV 2016, arXiv:1603.09246).

A crop is cut into 3 x 3 tiles, which are shuffled by one of K permutations chosen for maximal
Hamming distance (1000 in the paper's best transfer setting); the network names the permutation.
The context-free network (CFN, Sec. 3) runs the shared backbone on each tile separately (so it
cannot use the tiles' borders), concatenates the nine features in tile order and classifies
them with fully connected layers (fc7 4096 -> fc8 K). Tile jitter, gaps, per-tile colour
jitter and normalization against low-level shortcuts happen in the `jigsaw` recipe.

Batch: `jigsaw_tiles` (B, 9, 3, t, t), `jigsaw_label` (B,) in 0..K-1. Output: `loss`, `jigsaw`,
`accuracy`. ``num_permutations`` must equal the recipe's ``permutation_count``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.heads import ProjectionHead
from selfsup.methods.losses import classification_loss
from selfsup.methods.protocol import OptimizerStep

NUM_TILES = 9


@dataclass
class JigsawOptions:
    name: str = "jigsaw"
    num_permutations: int = 1000  # = data.recipe.permutation_count
    head_hidden_dim: int = 4096


class Jigsaw(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_permutations: int,
                 head_hidden_dim: int):
        super().__init__()
        self.backbone = backbone
        self.num_permutations = num_permutations
        self.classifier = ProjectionHead(NUM_TILES * feature_dim, head_hidden_dim, num_permutations)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "jigsaw_tiles" not in batch:
            raise KeyError("jigsaw needs the `jigsaw` recipe (batch keys 'jigsaw_tiles', "
                           f"'jigsaw_label'); the batch has {sorted(batch)}")
        tiles, labels = batch["jigsaw_tiles"], batch["jigsaw_label"].long()
        if int(labels.max()) >= self.num_permutations:
            raise ValueError(f"jigsaw: permutation label {int(labels.max())} >= num_permutations="
                             f"{self.num_permutations}; set it to data.recipe.permutation_count")
        batch_size = tiles.shape[0]
        features = self.backbone(tiles.flatten(0, 1))  # (B * 9, D): every tile on its own
        logits = self.classifier(features.reshape(batch_size, -1))  # (B, 9 * D) -> (B, K)
        loss = classification_loss(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "jigsaw": loss.detach(), "accuracy": accuracy}

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


def build_jigsaw(options: JigsawOptions, backbone: nn.Module, feature_dim: int) -> Jigsaw:
    return Jigsaw(backbone, feature_dim, num_permutations=options.num_permutations,
                  head_hidden_dim=options.head_hidden_dim)
