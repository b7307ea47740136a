"""Context encoders: feature learning by inpainting (Pathak, Krahenbuhl, Donahue, Darrell &
Efros, CVPR 2016, arXiv:1604.07379).

A square region of the image is removed (filled with the mean, 0 after normalization); the
backbone encodes the context and a decoder of up-convolutions (upsample x2, 3x3 conv, BN, ReLU,
as many stages as the encoder's output stride needs) reconstructs the whole image. The loss is
the paper's masked L2 (Eq. 1) on the removed region, extended by ``overlap_pixels`` into the
context with ``overlap_weight`` times the weight (10x in the official code). Simplification:
the adversarial term (lambda_adv = 0.001, Eq. 2-3) is left out, leaving the reconstruction-only
context encoder of the paper's ablations; the channel-wise fully connected bottleneck is left
to the backbone's own receptive field.

Batch (the `inpainting` recipe): `inpaint_input`, `inpaint_target` (B, 3, S, S),
`inpaint_mask` (B, 1, S, S) bool (True = removed). Output: `loss`, `inpainting`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods.dense import feature_map, output_stride
from selfsup.methods.losses import inpainting_loss


@dataclass
class InpaintingOptions:
    name: str = "inpainting"
    overlap_weight: float = 10.0
    overlap_pixels: int = 4
    decoder_width: int = 256  # channels of the first up-convolution, halved per stage (>= 32)


class Inpainting(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, overlap_weight: float,
                 overlap_pixels: int, decoder_width: int):
        super().__init__()
        self.backbone = backbone
        self.overlap_weight = overlap_weight
        self.overlap_pixels = overlap_pixels
        stages = max(1, round(math.log2(output_stride(backbone))))
        layers: list[nn.Module] = []
        width_in, width = feature_dim, decoder_width
        for _ in range(stages):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(width_in, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            width_in, width = width, max(32, width // 2)
        layers.append(nn.Conv2d(width_in, 3, 3, padding=1))
        self.decoder = nn.Sequential(*layers)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "inpaint_input" not in batch:
            raise KeyError("inpainting needs the `inpainting` recipe (batch keys 'inpaint_input', "
                           f"'inpaint_target', 'inpaint_mask'); the batch has {sorted(batch)}")
        context, target = batch["inpaint_input"], batch["inpaint_target"]
        reconstruction = self.decoder(feature_map(self.backbone, context))
        if reconstruction.shape[-2:] != target.shape[-2:]:
            reconstruction = F.interpolate(reconstruction, size=target.shape[-2:], mode="bilinear",
                                           align_corners=False)
        loss = inpainting_loss(reconstruction.float(), target.float(), batch["inpaint_mask"],
                               self.overlap_weight, self.overlap_pixels)
        return {"loss": loss, "inpainting": loss.detach()}

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Nothing changes between steps."""

    def teacher_backbone(self) -> None:
        return None

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []


def build_inpainting(options: InpaintingOptions, backbone: nn.Module, feature_dim: int) -> Inpainting:
    return Inpainting(backbone, feature_dim, overlap_weight=options.overlap_weight,
                      overlap_pixels=options.overlap_pixels, decoder_width=options.decoder_width)
