"""The discrete VAE's networks: a convolutional encoder to a grid of code logits, and a decoder
from (relaxed) codes back to pixels (after DALL-E's dVAE, Ramesh et al., "Zero-Shot Text-to-Image
Generation", ICML 2021, arXiv:2102.12092, Sec. 2.1 and appendix A.1, much smaller).

* ``DVAEEncoder`` (``kind = "conv"``, registered as ``dvae_encoder`` in
  ``methods.backbones.BACKBONES``): (B, 3, S, S) -> ``logits`` (B, K, S/p, S/p) over a codebook
  of K codes, one cell per p x p patch: the grid of the ViT with patch size p that BEiT trains on
  its codes. ``codes`` is their argmax, (B, N) int64, N = (S/p)^2, cells in reading order (the
  ViT's patch order). ``forward`` is what evaluation and export use: the mean over the grid of the
  last feature map before the logits, (B, hidden_dim); ``forward_features`` that map itself.
* ``DVAEDecoder``: relaxed one-hot codes (B, K, S/p, S/p) -> pixels (B, 3, S, S). The codes
  select (mix) rows of a learned codebook of K embeddings, then transposed convolutions upsample.

The downsampling is log2(p) stages of a stride-2 4 x 4 convolution and a residual block, widths
doubling from hidden_dim / 2^(stages - 1) to hidden_dim (the decoder mirrors it). Like DALL-E's,
neither network has normalization layers: train and eval mode compute the same function.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.methods.protocol import BackboneKind


def downsampling_stages(patch_size: int) -> int:
    """log2(patch_size): how many stride-2 stages map a p x p patch to one grid cell."""
    if patch_size < 2 or patch_size & (patch_size - 1):
        raise ValueError(f"the dvae encoder's patch_size={patch_size} must be a power of two (2, 4, 8, 16, ...)")
    return patch_size.bit_length() - 1


def stage_widths(hidden_dim: int, stages: int) -> list[int]:
    """Channels per stage, doubling up to `hidden_dim`: [hidden_dim / 2^(stages - 1), ..., hidden_dim]."""
    if hidden_dim % 2 ** (stages - 1):
        raise ValueError(f"hidden_dim={hidden_dim} must be divisible by 2^{stages - 1} (it halves per "
                         "stage towards the image)")
    return [hidden_dim // 2 ** (stages - 1 - stage) for stage in range(stages)]


class ResidualBlock(nn.Module):
    """x + conv3x3(relu(conv3x3(relu(x)))): (B, C, H, W) -> (B, C, H, W), pre-activation, no norm."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(self.relu(x))))


class DVAEEncoder(nn.Module):
    """Image -> grid of code logits; the dvae method's backbone and BEiT's tokenizer."""

    kind: BackboneKind = "conv"

    def __init__(self, patch_size: int = 16, codebook_size: int = 8192, hidden_dim: int = 256):
        super().__init__()
        if codebook_size < 2:
            raise ValueError(f"codebook_size={codebook_size} must be at least 2")
        stages = downsampling_stages(patch_size)
        self.patch_size = patch_size
        self.codebook_size = codebook_size
        self.hidden_dim = hidden_dim
        self.feature_dim: int = hidden_dim
        self.output_stride: int = patch_size
        layers, channels = [], 3
        for width in stage_widths(hidden_dim, stages):
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), ResidualBlock(width)]
            channels = width
        self.stages = nn.Sequential(*layers)
        self.relu = nn.ReLU()
        self.to_logits = nn.Conv2d(hidden_dim, codebook_size, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, hidden_dim, S/p, S/p), the map the logits are read from."""
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"image size {x.shape[-2]}x{x.shape[-1]} is not a multiple of the dvae's "
                             f"patch size {self.patch_size}")
        return self.relu(self.stages(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, K, S/p, S/p) unnormalized log-probabilities of each cell's code."""
        return self.to_logits(self.forward_features(x))

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, N) int64, the most likely code of each cell, in reading order."""
        return self.logits(x).argmax(dim=1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, hidden_dim): the grid's features averaged, for kNN, probes, export."""
        return self.forward_features(x).mean(dim=(2, 3))


class DVAEDecoder(nn.Module):
    """Relaxed one-hot codes (B, K, h, w) -> images (B, 3, h * p, w * p)."""

    def __init__(self, patch_size: int, codebook_size: int, hidden_dim: int):
        super().__init__()
        stages = downsampling_stages(patch_size)
        self.codebook = nn.Parameter(torch.empty(codebook_size, hidden_dim))  # one embedding per code
        nn.init.normal_(self.codebook, std=1.0)
        layers, widths = [], stage_widths(hidden_dim, stages)[::-1]  # hidden_dim first
        for stage, width in enumerate(widths):
            out = widths[stage + 1] if stage + 1 < stages else widths[-1]
            layers += [ResidualBlock(width), nn.ReLU(), nn.ConvTranspose2d(width, out, 4, stride=2, padding=1)]
        self.stages = nn.Sequential(*layers)
        self.relu = nn.ReLU()
        self.to_pixels = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        embedded = torch.einsum("bkhw,kd->bdhw", codes, self.codebook.to(codes.dtype))  # (B, D, h, w)
        return self.to_pixels(self.relu(self.stages(embedded)))


def dvae_encoder(patch_size: int = 16, codebook_size: int = 8192, hidden_dim: int = 256) -> DVAEEncoder:
    """The dvae's encoder: log2(patch_size) stages up to `hidden_dim` channels, logits over
    `codebook_size` codes (DALL-E's 8192 by default)."""
    return DVAEEncoder(patch_size=patch_size, codebook_size=codebook_size, hidden_dim=hidden_dim)
