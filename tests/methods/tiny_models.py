"""Tiny models and batches shared by the method mechanism tests (fast on a CPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods.vision_transformer import VisionTransformer

SIZE = 8  # tiny images: 3 x 8 x 8


class TinyBackbone(nn.Module):
    """Flatten + linear: (B, 3, S, S) -> (B, 16) for any S (average-pooled to 4 x 4 first).

    Pooled features and no tokens: to the methods, a ResNet."""

    feature_dim = 16
    kind = "resnet"

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 4 * 4, 16)

    def forward(self, x):
        return self.linear(F.adaptive_avg_pool2d(x, 4).flatten(1))


def tiny_vit(**kwargs) -> VisionTransformer:
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, **kwargs)


def two_views(batch: int = 4, size: int = SIZE) -> dict[str, torch.Tensor]:
    return {"view_0": torch.randn(batch, 3, size, size), "view_1": torch.randn(batch, 3, size, size)}


def sgd_step(model: nn.Module, batch: dict[str, torch.Tensor], lr: float = 0.1) -> dict:
    outputs = model(batch)
    model.zero_grad(set_to_none=True)
    outputs["loss"].backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter -= lr * parameter.grad
    return outputs
