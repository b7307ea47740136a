"""Context encoders: feature learning by inpainting (Pathak, Krahenbuhl, Donahue, Darrell &
Efros, CVPR 2016, arXiv:1604.07379).

A square region of the image is removed (filled with the mean, 0 after normalization); the
backbone encodes the context and a decoder of up-convolutions (upsample x2, 3x3 conv, BN, ReLU,
as many stages as the encoder's output stride needs) reconstructs the whole image. The
reconstruction loss is the paper's masked L2 (Eq. 1) on the removed region, extended by
``overlap_pixels`` into the context with ``overlap_weight`` times the weight (10x in the official
code). The channel-wise fully connected bottleneck is left to the backbone's own receptive field.

``adversarial_weight`` > 0 adds the paper's adversarial loss (Eq. 2-3): a DCGAN discriminator
(``ContextEncoderDiscriminator``) tells the real region from the filled one, and the generator
(backbone + decoder) minimises ``(1 - adversarial_weight) * L_rec + adversarial_weight * L_adv``
(Eq. 5, lambda_rec = 0.999 and lambda_adv = 0.001 in the paper). Two optimizers then take turns
each step (``optimizer_steps``): the discriminator first, on the regions of the real images and
of the generator's reconstruction detached, then the generator against the updated
discriminator, as the official (DCGAN-based) code alternates them. The generator is run twice
per step (once without gradients for the discriminator's step), so the decoder's and the
backbone's BatchNorm statistics see each batch twice. ``adversarial_weight`` 0 (the default)
builds no discriminator: the reconstruction-only context encoder, one optimizer.

Batch (the `inpainting` recipe): `inpaint_input`, `inpaint_target` (B, 3, S, S),
`inpaint_mask` (B, 1, S, S) bool (True = removed). Output of the generator's step: `loss`,
`inpainting` (the reconstruction loss), and with a discriminator `adversarial`; of the
discriminator's step: `discriminator_loss`, `discriminator_real` and `discriminator_fake` (the mean
probability it gives the real and the filled regions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.dense import decode_image, feature_map, output_stride, pixel_decoder
from selfsup.methods.discriminators import ContextEncoderDiscriminator
from selfsup.methods.losses import discriminator_loss, generator_adversarial_loss, inpainting_loss
from selfsup.methods.protocol import OptimizerStep

STEPS = ("discriminator", "generator")


@dataclass
class InpaintingOptions:
    name: str = "inpainting"
    overlap_weight: float = 10.0
    overlap_pixels: int = 4
    decoder_width: int = 256  # channels of the first up-convolution, halved per stage (>= 32)
    adversarial_weight: float = 0.0  # lambda_adv of Eq. 5 (the paper: 0.001); 0 = no discriminator
    discriminator_width: int = 64  # channels of its first convolution, doubled per stage (up to 8x)
    discriminator_lr_multiplier: float = 1.0  # the discriminator's lr = this x the scheduled lr


def region_crops(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) images, (B, 1, S, S) masks of one square of side s each -> (B, C, s, s) the squares."""
    rows, columns = mask[:, 0].any(dim=2), mask[:, 0].any(dim=1)  # (B, S) each
    side = int(rows[0].sum())
    offsets = torch.arange(side, device=images.device)
    top = rows.int().argmax(dim=1)[:, None] + offsets  # (B, s): the first True row, and on
    left = columns.int().argmax(dim=1)[:, None] + offsets
    samples = torch.arange(images.shape[0], device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[samples, top[:, :, None], left[:, None, :]].permute(0, 3, 1, 2)


class Inpainting(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, overlap_weight: float, overlap_pixels: int,
                 decoder_width: int, adversarial_weight: float = 0.0, discriminator_width: int = 64,
                 discriminator_lr_multiplier: float = 1.0):
        super().__init__()
        if not 0.0 <= adversarial_weight < 1.0:
            raise ValueError(f"adversarial_weight={adversarial_weight}: expected a weight in [0, 1)")
        self.backbone = backbone
        self.overlap_weight = overlap_weight
        self.overlap_pixels = overlap_pixels
        self.adversarial_weight = adversarial_weight
        self.discriminator_lr_multiplier = discriminator_lr_multiplier
        self.decoder = pixel_decoder(feature_dim, output_stride(backbone), decoder_width)
        self.discriminator = ContextEncoderDiscriminator(discriminator_width) if adversarial_weight > 0 else None

    def forward(self, batch: dict[str, torch.Tensor], step: str = "generator") -> dict[str, torch.Tensor]:
        if "inpaint_input" not in batch:
            raise KeyError("inpainting needs the `inpainting` recipe (batch keys 'inpaint_input', "
                           f"'inpaint_target', 'inpaint_mask'); the batch has {sorted(batch)}")
        if step not in STEPS or (step == "discriminator" and self.discriminator is None):
            raise ValueError(f"step={step!r}; this context encoder's steps are "
                             f"{[s.name for s in self.optimizer_steps()] or ['generator']}")
        context, target, mask = batch["inpaint_input"], batch["inpaint_target"], batch["inpaint_mask"]
        if step == "discriminator":
            with torch.no_grad():
                filled = self._reconstruct(context, target.shape[-2:])
            real_logits = self.discriminator(region_crops(target, mask)).float()
            fake_logits = self.discriminator(region_crops(filled, mask)).float()
            loss = discriminator_loss(real_logits, fake_logits)
            return {"discriminator_loss": loss, "discriminator_real": torch.sigmoid(real_logits).mean().detach(),
                    "discriminator_fake": torch.sigmoid(fake_logits).mean().detach()}
        reconstruction = self._reconstruct(context, target.shape[-2:])
        reconstruction_loss = inpainting_loss(reconstruction.float(), target.float(), mask,
                                              self.overlap_weight, self.overlap_pixels)
        if self.discriminator is None:
            return {"loss": reconstruction_loss, "inpainting": reconstruction_loss.detach()}
        adversarial = generator_adversarial_loss(self.discriminator(region_crops(reconstruction, mask)).float())
        loss = (1.0 - self.adversarial_weight) * reconstruction_loss + self.adversarial_weight * adversarial
        return {"loss": loss, "inpainting": reconstruction_loss.detach(), "adversarial": adversarial.detach()}

    def _reconstruct(self, context: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return decode_image(self.decoder, feature_map(self.backbone, context), size)

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Nothing changes between steps."""

    def teacher_backbone(self) -> None:
        return None

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []

    def optimizer_steps(self) -> list[OptimizerStep]:
        """With a discriminator: its step (minimising "discriminator_loss"), then the generator's
        (backbone and decoder, minimising "loss"); without, the one default optimizer ([])."""
        if self.discriminator is None:
            return []
        discriminator = [p for p in self.discriminator.parameters() if p.requires_grad]
        owned = {id(p) for p in discriminator}
        generator = [p for p in self.parameters() if p.requires_grad and id(p) not in owned]
        return [OptimizerStep("discriminator", discriminator, "discriminator_loss",
                              lr_multiplier=self.discriminator_lr_multiplier),
                OptimizerStep("generator", generator, "loss")]


def build_inpainting(options: InpaintingOptions, backbone: nn.Module, feature_dim: int) -> Inpainting:
    return Inpainting(backbone, feature_dim, overlap_weight=options.overlap_weight,
                      overlap_pixels=options.overlap_pixels, decoder_width=options.decoder_width,
                      adversarial_weight=options.adversarial_weight,
                      discriminator_width=options.discriminator_width,
                      discriminator_lr_multiplier=options.discriminator_lr_multiplier)
