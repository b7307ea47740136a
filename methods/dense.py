"""Spatial feature maps from any backbone, for the pretext methods that predict per pixel
(colorization, inpainting) or take other inputs than RGB (colorization's lightness).

* ``feature_map(backbone, x)``: (B, C, H, W) -> (B, feature_dim, H / stride, W / stride): the
  ResNet's last stage, or the ViT's patch tokens laid out on their grid (by ``backbone.kind``).
* ``output_stride(backbone)``: that stride (the ResNet's: 32, 8 with the small-input stem, halved
  by each dilated stage; the ViT patch size).
* ``adapt_input_channels(backbone, channels)``: replace the first layer (ResNet ``conv1``, ViT
  patch projection) by a freshly initialized one reading ``channels`` input channels.
* ``pixel_decoder(feature_dim, stride, width)``: the up-convolution decoder that turns such a
  map back into an image (inpainting, super-resolution, the denoising autoencoder), and
  ``decode_image(decoder, features, size)`` its output at exactly the target's size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, D, h, w) spatial features of the backbone's last layer."""
    if backbone.kind == "vit":
        tokens = backbone.forward_tokens(x)[:, 1:]  # (B, h * w, D), row-major
        rows, columns = x.shape[-2] // backbone.patch_size, x.shape[-1] // backbone.patch_size
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, rows, columns)
    return backbone.forward_features(x)  # a ResNet's last stage


def output_stride(backbone: nn.Module) -> int:
    """How many input pixels one feature-map cell covers."""
    if backbone.kind == "vit":
        return int(backbone.patch_size)
    return int(backbone.output_stride)


def adapt_input_channels(backbone: nn.Module, channels: int) -> nn.Module:
    """Make the backbone read `channels` input channels (in place; returns it).

    The first convolution keeps its shape otherwise (kernel, stride, padding, width) and is
    initialized as the original (Kaiming for the ResNet stem, Xavier for the ViT patch
    projection, as in MAE).
    """
    if backbone.kind == "vit":
        old = backbone.patch_embed.proj
        new = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride)
        nn.init.xavier_uniform_(new.weight.view(new.out_channels, -1))
        nn.init.zeros_(new.bias)
        backbone.patch_embed.proj = new
        return backbone
    old = backbone.conv1  # the ResNet stem
    new = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    backbone.conv1 = new
    return backbone


def pixel_decoder(feature_dim: int, stride: int, width: int, out_channels: int = 3) -> nn.Sequential:
    """Up-convolutions from a (B, feature_dim, H / stride, W / stride) map to (B, out_channels, H, W).

    log2(stride) stages (at least one) of upsample x2 (nearest), 3x3 conv, BatchNorm, ReLU, the
    first with `width` channels, halved per stage down to 32; then a 3x3 conv to `out_channels`
    (the context encoder's decoder, Pathak et al. 2016, with up-convolutions as upsample + conv).
    """
    stages = max(1, round(math.log2(stride)))
    layers: list[nn.Module] = []
    width_in = feature_dim
    for _ in range(stages):
        layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                   nn.Conv2d(width_in, width, 3, padding=1, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        width_in, width = width, max(32, width // 2)
    layers.append(nn.Conv2d(width_in, out_channels, 3, padding=1))
    return nn.Sequential(*layers)


def decode_image(decoder: nn.Module, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`decoder(features)` resized (bilinearly) to `size` = (H, W) where the strides do not land on it."""
    image = decoder(features)
    if tuple(image.shape[-2:]) != tuple(size):
        image = F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False)
    return image
