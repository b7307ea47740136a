"""Projection, prediction, DINO and SwAV-prototype heads.

All heads map (B, input_dim) -> (B, output_dim).

* ``ProjectionHead``: SimCLR (Chen et al. 2020) Linear-BN-ReLU-Linear; with ``num_layers=3``
  SimCLR v2 / Barlow Twins / VICReg; with ``last_batch_norm=True`` SimSiam's projector.
* ``PredictionHead``: the BYOL (Grill et al. 2020) / SimSiam (Chen & He 2021) predictor.
* ``DINOHead``: DINO (Caron et al. 2021) MLP with GELU, an L2-normalized bottleneck and a
  weight-normalized last layer (magnitude fixed to 1 with ``norm_last_layer``).
* ``PrototypesHead``: SwAV (Caron et al. 2020) prototypes, a bias-free linear layer applied to
  L2-normalized features; ``normalize_prototypes()`` re-projects the prototypes to the sphere
  (SwAV does it before every training step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """MLP projector: ``num_layers`` linear layers, hidden layers Linear-[BN]-ReLU.

    Args:
        input_dim, hidden_dim, output_dim: widths (``hidden_dim`` unused when ``num_layers=1``).
        num_layers: number of linear layers (2 for SimCLR/BYOL, 3 for SimCLR v2/Barlow/VICReg).
        batch_norm: BatchNorm1d after each hidden linear layer (their bias is then dropped).
        last_batch_norm: BatchNorm1d without affine parameters after the last linear layer,
            as in SimSiam's projector (the last linear layer then has no bias).

    Shapes: (B, input_dim) -> (B, output_dim).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        width = input_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            width = hidden_dim
        layers.append(nn.Linear(width, output_dim, bias=not last_batch_norm))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(output_dim, affine=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PredictionHead(nn.Module):
    """BYOL / SimSiam predictor: Linear-BN-ReLU-Linear, (B, input_dim) -> (B, output_dim).

    BYOL: 256 -> 4096 -> 256. SimSiam: 2048 -> 512 -> 2048 (bottleneck).
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, output_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class WeightNormalizedLinear(nn.Module):
    """Bias-free linear layer with weight normalization (Salimans & Kingma 2016), rows = outputs.

    weight = magnitude * direction / ||direction||_row. With ``learn_magnitude=False`` the
    magnitude is fixed to 1, so every output unit's weight vector has unit norm (DINO's
    ``norm_last_layer=True``). Shapes: (B, input_dim) -> (B, output_dim).
    """

    def __init__(self, input_dim: int, output_dim: int, learn_magnitude: bool = False):
        super().__init__()
        self.direction = nn.Parameter(torch.empty(output_dim, input_dim))
        # same initialisation as nn.Linear
        nn.init.kaiming_uniform_(self.direction, a=5**0.5)
        self.magnitude = nn.Parameter(torch.ones(output_dim, 1)) if learn_magnitude else None

    @property
    def weight(self) -> torch.Tensor:
        weight = self.direction / self.direction.norm(dim=1, keepdim=True)
        return weight if self.magnitude is None else weight * self.magnitude

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """DINO projection head (Caron et al., "Emerging Properties in Self-Supervised ViTs", 2021).

    MLP (``num_layers`` linears with GELU, optional BN) to ``bottleneck_dim``, L2-normalize,
    then a weight-normalized linear layer to ``output_dim`` prototypes (logits).
    Shapes: (B, input_dim) -> (B, output_dim).

    ``norm_last_layer=True`` fixes the last layer's magnitude to 1 (the official default, more
    stable for ViT-S); otherwise the magnitude is learned (initialised to 1). Freezing the last
    layer during the first epoch is the trainer's job (DINO's ``last_layer_parameters()``).
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
        batch_norm: bool = False,
    ):
        super().__init__()
        num_layers = max(num_layers, 1)
        if num_layers == 1:
            self.mlp: nn.Module = nn.Linear(input_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            width = input_dim
            for _ in range(num_layers - 1):
                layers.append(nn.Linear(width, hidden_dim))
                if batch_norm:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
                width = hidden_dim
            layers.append(nn.Linear(width, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormalizedLinear(
            bottleneck_dim, output_dim, learn_magnitude=not norm_last_layer
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(x)


class PrototypesHead(nn.Module):
    """SwAV prototypes (Caron et al., "Unsupervised Learning of Visual Features by Contrasting
    Cluster Assignments", NeurIPS 2020).

    Scores = normalize(x) @ prototypes.T, (B, input_dim) -> (B, num_prototypes); with
    normalized prototypes the scores are cosine similarities in [-1, 1].
    """

    def __init__(self, input_dim: int, num_prototypes: int = 3000):
        super().__init__()
        self.prototypes = nn.Linear(input_dim, num_prototypes, bias=False)
        self.normalize_prototypes()

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Project every prototype onto the unit sphere (in place, outside autograd)."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(x, dim=-1))
