"""dVAE: the discrete variational autoencoder that turns an image into a grid of visual tokens
(Ramesh et al., "Zero-Shot Text-to-Image Generation" (DALL-E), ICML 2021, arXiv:2102.12092,
Sec. 2.1 and appendix A), trained here as BEiT's tokenizer (Bao et al., ICLR 2022, Sec. 2.2).

The encoder (``methods.discrete_vae.DVAEEncoder``, the backbone: ``model.backbone: dvae_encoder``)
gives each p x p patch of the view a categorical distribution over a codebook of K codes (8192
by default, as DALL-E). The decoder reconstructs the view from a Gumbel-softmax relaxed sample of
the codes (Jang et al. 2017; Maddison et al. 2017): ``softmax((logits + g) / tau)`` with Gumbel
noise g. The loss is the negative ELB (``losses.dvae_loss``): the reconstruction error plus
``beta * KL(q || uniform)``. As in DALL-E's appendix A.2, tau is annealed from
`temperature` (1) to `final_temperature` (1/16) with a cosine over the first
`temperature_anneal_fraction` of the steps, and beta rises linearly from 0 to `kl_weight` over
the first `kl_warmup_fraction`; both live in buffers (``temperature``, ``kl_weight``), advanced in
``on_step_end``, so a resumed run continues them exactly.

Why a dVAE rather than a VQ-VAE (van den Oord et al. 2017): BEiT's tokenizer is DALL-E's dVAE,
whose codes are the argmax of the encoder's logits, exactly what BEiT predicts; the relaxation
gives the encoder true gradients (no straight-through estimator, no commitment loss), and the KL
term towards the uniform prior keeps the whole codebook in use, where a VQ-VAE needs k-means
initialization, EMA codebooks or dead-code restarts against collapse onto a few codes.

Batch: `view_0` (B, 3, S, S) (the `dvae` recipe). Output: `loss`, `reconstruction` (mean squared
error), `kl`, `perplexity` (exp of the entropy of the batch's argmax codes: K when spread evenly,
1 when collapsed), `codebook_usage` (fraction of the K codes in the batch), `temperature`,
`kl_weight`. State: the buffers `temperature`, `kl_weight`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods.protocol import OptimizerStep
from selfsup.methods.discrete_vae import DVAEDecoder, DVAEEncoder
from selfsup.methods.losses import codebook_usage, dvae_loss


@dataclass
class DVAEOptions:
    name: str = "dvae"
    codebook_size: int = 8192  # K, DALL-E's
    hidden_dim: int = 256  # channels of the encoder's last stage and the decoder's first
    temperature: float = 1.0  # Gumbel-softmax tau at the start (DALL-E: 1)
    final_temperature: float = 0.0625  # DALL-E: 1/16
    temperature_anneal_fraction: float = 1.0  # of all steps, cosine (DALL-E: its first 150k updates)
    kl_weight: float = 0.02  # beta after the warm-up, for mean terms: ~ 2 x 6.6 / 768 (16 px cells)
    kl_warmup_fraction: float = 0.05  # of all steps, linear from 0 (DALL-E: the first 5000 updates)


def annealed_temperature(step: int, total_steps: int, start: float, end: float, fraction: float) -> float:
    """Cosine from `start` at step 0 to `end` at step `fraction * total_steps`, `end` after."""
    anneal_steps = fraction * total_steps
    if step >= anneal_steps:
        return end
    return end + (start - end) * (1 + math.cos(math.pi * step / anneal_steps)) / 2


def warmed_up_weight(step: int, total_steps: int, weight: float, fraction: float) -> float:
    """Linear from 0 at step 0 to `weight` at step `fraction * total_steps`, `weight` after."""
    warmup_steps = fraction * total_steps
    if step >= warmup_steps:
        return weight
    return weight * step / warmup_steps


class DVAE(nn.Module):
    def __init__(self, backbone: nn.Module, *, temperature: float, final_temperature: float,
                 temperature_anneal_fraction: float, kl_weight: float, kl_warmup_fraction: float):
        super().__init__()
        if not isinstance(backbone, DVAEEncoder):
            raise ValueError(f"dvae trains its own encoder: set model.backbone: dvae_encoder, not a "
                             f"{type(backbone).__name__}")
        if not 0 < final_temperature <= temperature:
            raise ValueError(f"method.final_temperature={final_temperature} must be in (0, "
                             f"method.temperature={temperature}]")
        for name, fraction in (("temperature_anneal_fraction", temperature_anneal_fraction),
                               ("kl_warmup_fraction", kl_warmup_fraction)):
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"method.{name}={fraction} must be a fraction of the steps in [0, 1]")
        if kl_weight < 0:
            raise ValueError(f"method.kl_weight={kl_weight} must be >= 0")
        self.backbone = backbone
        self.codebook_size = backbone.codebook_size
        self.decoder = DVAEDecoder(backbone.patch_size, backbone.codebook_size, backbone.hidden_dim)
        self.temperature_schedule = (temperature, final_temperature, temperature_anneal_fraction)
        self.kl_schedule = (kl_weight, kl_warmup_fraction)
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("kl_weight", torch.tensor(float(warmed_up_weight(0, 1, *self.kl_schedule))))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 3, S, S): the decoder's image from the argmax codes (no relaxation)."""
        codes = self.backbone.logits(images).argmax(dim=1)  # (B, h, w)
        one_hot = F.one_hot(codes, self.codebook_size).permute(0, 3, 1, 2).to(images.dtype)
        return self.decoder(one_hot)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["view_0"]
        logits = self.backbone.logits(images).float()  # (B, K, h, w)
        relaxed = F.gumbel_softmax(logits, tau=float(self.temperature), hard=False, dim=1)
        reconstruction = self.decoder(relaxed)  # (B, 3, S, S)
        loss, error, kl = dvae_loss(reconstruction.float(), images.float(), logits, float(self.kl_weight))
        with torch.no_grad():
            perplexity, used = codebook_usage(logits.argmax(dim=1), self.codebook_size)
        return {"loss": loss, "reconstruction": error.detach(), "kl": kl.detach(), "perplexity": perplexity,
                "codebook_usage": used, "temperature": self.temperature.clone(),
                "kl_weight": self.kl_weight.clone()}

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """The relaxation temperature and the KL weight of the next step."""
        self.temperature.fill_(annealed_temperature(step + 1, total_steps, *self.temperature_schedule))
        self.kl_weight.fill_(warmed_up_weight(step + 1, total_steps, *self.kl_schedule))

    def teacher_backbone(self) -> None:
        return None

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []

    def optimizer_steps(self) -> list[OptimizerStep]:
        """One optimizer over every trainable parameter, minimising "loss"."""
        return []


def build_dvae(options: DVAEOptions, backbone: nn.Module, feature_dim: int) -> DVAE:
    """The encoder is the backbone, built from `dvae_encoder` with the options' codebook_size and
    hidden_dim (``trainer.model.backbone_options``)."""
    if isinstance(backbone, DVAEEncoder) and (backbone.codebook_size, backbone.hidden_dim) != (
            options.codebook_size, options.hidden_dim):
        raise ValueError(f"the dvae encoder has {backbone.codebook_size} codes of width {backbone.hidden_dim}, the "
                         f"options say {options.codebook_size} and {options.hidden_dim}")
    return DVAE(backbone, temperature=options.temperature, final_temperature=options.final_temperature,
                temperature_anneal_fraction=options.temperature_anneal_fraction, kl_weight=options.kl_weight,
                kl_warmup_fraction=options.kl_warmup_fraction)
