"""Super-resolution as a pretext: SRGAN (Ledig et al., "Photo-Realistic Single Image
Super-Resolution Using a Generative Adversarial Network", CVPR 2017, arXiv:1609.04802).

The generator is an encoder-decoder: the backbone (the representation this method trains)
encodes the low-resolution view and a decoder of up-convolutions (``dense.pixel_decoder``)
predicts the missing detail, added to the bicubic upscale it started from (global residual
learning, as VDSR, Kim et al. 2016): ``SR = upscaled + decoder(backbone(upscaled))``. Its loss
is SRGAN's perceptual loss (Eq. 3), each term weighted by an option:

* ``pixel_weight`` x the pixel MSE (Eq. 4; SRResNet-MSE and SRGAN-MSE);
* ``content_weight`` x the content loss (Eq. 5) in the last feature map of a frozen feature
  network, when ``content_network`` names one: a backbone exported by ``selfsup export``
  (``backbone.pt`` with its ``backbone.json``), the stand-in for the paper's ImageNet VGG19
  (phi_5,4, its deepest convolutional features);
* ``adversarial_weight`` x the generator's adversarial loss ``-log D(SR)`` (Eq. 6, 1e-3 in the
  paper) against ``SRGANDiscriminator`` (Fig. 4), trained alternately on the high-resolution
  views and the detached super-resolved ones (``optimizer_steps``: the discriminator first, then
  the generator, as Goodfellow et al.'s Algorithm 1 with k = 1). 0 builds no discriminator (the
  paper's SRResNet: one optimizer). The generator is run twice per step (without gradients for
  the discriminator's step), so its BatchNorm statistics see each batch twice.

Why the input is upscaled before the network (the paper's generator upsamples inside, with
sub-pixel convolutions): the backbone is what evaluation keeps, and evaluation shows it
full-resolution images of the training size. Fed the x4-upscaled view, the encoder sees objects at
the scale and the image size it will be evaluated on, missing only the fine detail; fed the
1/4-size image, it would learn features of images 4x smaller (and a ResNet's stride-32 map of a
24 px input is a single cell). The representation is the backbone's pooled last stage, as for every
method: the decoder reads nothing but that stage's map (no skip connections around the encoder),
so whatever detail the super-resolved image gains has to be encoded there; the discriminator's
features are not used.

Batch (the `super_resolution` recipe): `sr_input` (B, 3, S, S), the view downscaled x4 and
upscaled back (bicubic), `sr_target` (B, 3, S, S), the view. Output of the generator's step: `loss`,
`pixel`, and `content` / `adversarial` where used; of the discriminator's: `discriminator_loss`,
`discriminator_real`, `discriminator_fake` (its mean probabilities for real and super-resolved).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selfsup.methods.backbones import build_backbone
from selfsup.methods.dense import decode_image, feature_map, output_stride, pixel_decoder
from selfsup.methods.discriminators import SRGANDiscriminator
from selfsup.methods.losses import content_loss, discriminator_loss, generator_adversarial_loss, pixel_loss
from selfsup.methods.protocol import OptimizerStep

STEPS = ("discriminator", "generator")


@dataclass
class SuperResolutionOptions:
    name: str = "super_resolution"
    decoder_width: int = 256  # channels of the first up-convolution, halved per stage (>= 32)
    pixel_weight: float = 1.0
    content_weight: float = 1.0  # used with a content_network
    content_network: str = ""  # an exported backbone's .pt (its .json beside it); "" = no content loss
    adversarial_weight: float = 1.0e-3  # SRGAN's 10^-3; 0 = SRResNet, no discriminator
    discriminator_width: int = 64
    discriminator_lr_multiplier: float = 1.0  # the discriminator's lr = this x the scheduled lr


def load_feature_network(path: str) -> nn.Module:
    """A backbone exported by `selfsup export` (`path`, its `.json` sidecar beside it), frozen."""
    weights = Path(path)
    sidecar = weights.with_suffix(".json")
    if not weights.is_file() or not sidecar.is_file():
        raise ValueError(f"content_network={path!r}: expected an exported backbone file and its "
                         f"{sidecar.name} beside it (selfsup export)")
    spec = json.loads(sidecar.read_text())
    network, _ = build_backbone(spec["backbone"], **spec["kwargs"])
    if not any(parameter.is_meta for parameter in network.parameters()):  # built on the meta device: no weights
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    network.requires_grad_(False)
    return network.eval()


class SuperResolution(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, decoder_width: int, pixel_weight: float,
                 content_weight: float, content_network: nn.Module | None, adversarial_weight: float,
                 discriminator_width: int, discriminator_lr_multiplier: float):
        super().__init__()
        self.backbone = backbone
        self.decoder = pixel_decoder(feature_dim, output_stride(backbone), decoder_width)
        self.pixel_weight = pixel_weight
        self.content_weight = content_weight
        self.adversarial_weight = adversarial_weight
        self.content_network = content_network
        self.discriminator = SRGANDiscriminator(discriminator_width) if adversarial_weight > 0 else None
        self.discriminator_lr_multiplier = discriminator_lr_multiplier

    def forward(self, batch: dict[str, torch.Tensor], step: str = "generator") -> dict[str, torch.Tensor]:
        if "sr_input" not in batch:
            raise KeyError("super_resolution needs the `super_resolution` recipe (batch keys 'sr_input', "
                           f"'sr_target'); the batch has {sorted(batch)}")
        if step not in STEPS or (step == "discriminator" and self.discriminator is None):
            raise ValueError(f"step={step!r}; this method's steps are "
                             f"{[s.name for s in self.optimizer_steps()] or ['generator']}")
        upscaled, target = batch["sr_input"], batch["sr_target"]
        if step == "discriminator":
            with torch.no_grad():
                generated = self.super_resolve(upscaled)
            real_logits, fake_logits = self.discriminator(target).float(), self.discriminator(generated).float()
            return {"discriminator_loss": discriminator_loss(real_logits, fake_logits),
                    "discriminator_real": torch.sigmoid(real_logits).mean().detach(),
                    "discriminator_fake": torch.sigmoid(fake_logits).mean().detach()}
        generated = self.super_resolve(upscaled)
        pixel = pixel_loss(generated.float(), target.float())
        loss, terms = self.pixel_weight * pixel, {"pixel": pixel.detach()}
        if self.content_network is not None:
            self.content_network.eval()  # frozen: its BatchNorm statistics stay those it was exported with
            with torch.no_grad():
                target_features = feature_map(self.content_network, target)
            content = content_loss(feature_map(self.content_network, generated).float(), target_features.float())
            loss, terms["content"] = loss + self.content_weight * content, content.detach()
        if self.discriminator is not None:
            adversarial = generator_adversarial_loss(self.discriminator(generated).float())
            loss, terms["adversarial"] = loss + self.adversarial_weight * adversarial, adversarial.detach()
        return {"loss": loss, **terms}

    def super_resolve(self, upscaled: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) bicubic upscale -> (B, 3, S, S) super-resolved: the upscale plus the decoded detail."""
        return upscaled + decode_image(self.decoder, feature_map(self.backbone, upscaled), upscaled.shape[-2:])

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
        (backbone and decoder, minimising "loss"); without, the one default optimizer ([]). The
        frozen content network is in neither."""
        if self.discriminator is None:
            return []
        discriminator = [p for p in self.discriminator.parameters() if p.requires_grad]
        owned = {id(p) for p in discriminator}
        generator = [p for p in self.parameters() if p.requires_grad and id(p) not in owned]
        return [OptimizerStep("discriminator", discriminator, "discriminator_loss",
                              lr_multiplier=self.discriminator_lr_multiplier),
                OptimizerStep("generator", generator, "loss")]


def build_super_resolution(options: SuperResolutionOptions, backbone: nn.Module, feature_dim: int) -> SuperResolution:
    content_network = load_feature_network(options.content_network) if options.content_network else None
    return SuperResolution(backbone, feature_dim, decoder_width=options.decoder_width,
                           pixel_weight=options.pixel_weight, content_weight=options.content_weight,
                           content_network=content_network, adversarial_weight=options.adversarial_weight,
                           discriminator_width=options.discriminator_width,
                           discriminator_lr_multiplier=options.discriminator_lr_multiplier)
