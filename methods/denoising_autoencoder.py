"""Denoising autoencoders (Vincent, Larochelle, Bengio & Manzagol, "Extracting and Composing
Robust Features with Denoising Autoencoders", ICML 2008).

The input is corrupted (the `denoising` recipe draws the corruption per sample in the DALI graph:
masking noise, the paper's, drops a random 25% of the pixels to the mean; or additive Gaussian
noise); the backbone encodes the corrupted view and a decoder of up-convolutions
(``dense.pixel_decoder``) reconstructs the clean one. The loss is the squared reconstruction
error over the whole image (Sec. 2.3). The paper's encoder and decoder are one sigmoid layer
each, tied weights optional; here the encoder is the backbone (whose pooled last stage is the
representation evaluation takes) and the decoder is untied.

Batch (the `denoising` recipe): `denoise_input` (B, 3, S, S) corrupted, `denoise_target`
(B, 3, S, S) clean. Output: `loss`, `denoising`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.dense import decode_image, feature_map, output_stride, pixel_decoder
from selfsup.methods.losses import denoising_loss
from selfsup.methods.protocol import OptimizerStep


@dataclass
class DenoisingAutoencoderOptions:
    name: str = "denoising_autoencoder"
    decoder_width: int = 256  # channels of the first up-convolution, halved per stage (>= 32)


class DenoisingAutoencoder(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, decoder_width: int):
        super().__init__()
        self.backbone = backbone
        self.decoder = pixel_decoder(feature_dim, output_stride(backbone), decoder_width)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "denoise_input" not in batch:
            raise KeyError("denoising_autoencoder needs the `denoising` recipe (batch keys 'denoise_input', "
                           f"'denoise_target'); the batch has {sorted(batch)}")
        corrupted, clean = batch["denoise_input"], batch["denoise_target"]
        reconstruction = decode_image(self.decoder, feature_map(self.backbone, corrupted), clean.shape[-2:])
        loss = denoising_loss(reconstruction.float(), clean.float())
        return {"loss": loss, "denoising": loss.detach()}

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


def build_denoising_autoencoder(options: DenoisingAutoencoderOptions, backbone: nn.Module,
                                feature_dim: int) -> DenoisingAutoencoder:
    return DenoisingAutoencoder(backbone, feature_dim, decoder_width=options.decoder_width)
