"""Colorful image colorization (Zhang, Isola & Efros, ECCV 2016, arXiv:1603.08511).

The backbone sees only the lightness L of a CIE Lab image and predicts, for every pixel of a
1/4-resolution grid, a distribution over Q = 313 quantized in-gamut ab colour bins (grid size
10, Sec. 2.1). The loss is the class-rebalanced multinomial cross-entropy (Eq. 2): each pixel is
weighted by ``w = ((1 - lambda) p + lambda / Q)^-1`` (lambda = 0.5, Eq. 4) of its target bin,
normalized so that ``E_p[w] = 1``, where p is the empirical distribution of the bins, counted
here over every target seen so far (a buffer, summed over ranks). Simplifications: the targets
are the recipe's nearest bins (the paper soft-encodes 5 neighbours) and p is not smoothed.

The backbone's first layer reads one channel. ``backbone`` is wrapped in ``LightnessInput``,
which accepts (B, 1, S, S) lightness (``L - 50``, as the recipe gives) or normalized RGB
(ImageNet mean / std, as the evaluation recipe gives), converted to L here, so kNN evaluation
and export use it on ordinary images.

Batch (the `colorization` recipe): `lab_l` (B, 1, S, S), `ab_bins` (B, S/4, S/4) int64.
Output: `loss`, `colorization`, `accuracy` (pixels whose most likely bin is the target).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods import distributed
from selfsup.methods.dense import adapt_input_channels, feature_map
from selfsup.methods.losses import colorization_loss, rebalancing_weights
from selfsup.methods.protocol import OptimizerStep

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ColorizationOptions:
    name: str = "colorization"
    num_bins: int = 313  # in-gamut ab bins of grid size 10
    rebalance_lambda: float = 0.5
    head_hidden_dim: int = 256


def rgb_to_lightness(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Normalized sRGB (B, 3, H, W) -> CIE L* - 50 (B, 1, H, W), D65 white, L* in [0, 100].

    L* = 116 f(Y) - 16 with Y the relative luminance of the linearized sRGB values and
    f(t) = t^(1/3) above (6/29)^3, linear below (CIE 1976).
    """
    mean = images.new_tensor(mean).view(1, 3, 1, 1)
    std = images.new_tensor(std).view(1, 3, 1, 1)
    rgb = (images * std + mean).clamp(0.0, 1.0)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    luminance = 0.2126729 * linear[:, 0:1] + 0.7151522 * linear[:, 1:2] + 0.0721750 * linear[:, 2:3]
    delta = 6.0 / 29.0
    f = torch.where(luminance > delta ** 3, luminance.clamp_min(1e-12) ** (1.0 / 3.0),
                    luminance / (3 * delta ** 2) + 4.0 / 29.0)
    return 116.0 * f - 16.0 - 50.0


class LightnessInput(nn.Module):
    """A one-channel backbone that also takes normalized RGB: (B, 1 or 3, S, S) -> features.

    Lightness ``L - 50`` in [-50, 50] is scaled to [-1, 1] before the backbone. ``kind`` is the
    wrapped backbone's.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.net = backbone
        self.feature_dim = feature_dim
        self.kind = backbone.kind

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 3:
            x = rgb_to_lightness(x)
        return x / 50.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.prepare(x))


class Colorization(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_bins: int,
                 rebalance_lambda: float, head_hidden_dim: int):
        super().__init__()
        self.backbone = LightnessInput(adapt_input_channels(backbone, 1), feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, head_hidden_dim, 1, bias=False),
            nn.BatchNorm2d(head_hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(head_hidden_dim, num_bins, 1),
        )
        self.num_bins = num_bins
        self.rebalance_lambda = rebalance_lambda
        self.register_buffer("bin_counts", torch.zeros(num_bins, dtype=torch.float64))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "lab_l" not in batch:
            raise KeyError("colorization needs the `colorization` recipe (batch keys 'lab_l', "
                           f"'ab_bins'); the batch has {sorted(batch)}")
        lightness, bins = batch["lab_l"], batch["ab_bins"].long()
        if int(bins.max()) >= self.num_bins:
            raise ValueError(f"colorization: ab bin {int(bins.max())} >= num_bins={self.num_bins}")
        features = feature_map(self.backbone.net, self.backbone.prepare(lightness))  # (B, D, h, w)
        logits = self.head(features)
        logits = F.interpolate(logits, size=bins.shape[-2:], mode="bilinear", align_corners=False)
        if self.training:
            with torch.no_grad():
                counts = torch.bincount(bins.flatten(), minlength=self.num_bins).to(self.bin_counts.dtype)
                self.bin_counts += distributed.all_reduce_sum(counts)
        weights = rebalancing_weights(self.bin_counts.float().clamp_min(0), self.rebalance_lambda)
        loss = colorization_loss(logits.float(), bins, weights)
        accuracy = (logits.detach().argmax(dim=1) == bins).float().mean()
        return {"loss": loss, "colorization": loss.detach(), "accuracy": accuracy}

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


def build_colorization(options: ColorizationOptions, backbone: nn.Module,
                       feature_dim: int) -> Colorization:
    return Colorization(backbone, feature_dim, num_bins=options.num_bins,
                        rebalance_lambda=options.rebalance_lambda,
                        head_hidden_dim=options.head_hidden_dim)
