"""Backbones: ResNet-18/50 and ViT-Tiny/Small/Base, plus the ``BACKBONES`` registry.

* ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), in the
  torchvision layout ("v1.5": the stride of a bottleneck sits on its 3x3 conv) with the same
  parameter names, so torchvision state dicts (minus ``fc``) load directly. ``small_input=True``
  swaps the stem for the CIFAR one (3x3 conv, stride 1, no max-pool) for images of <= 64 px.
  ``dilated_stages=N`` (1 or 2) keeps the resolution through the last N stages, their stride 2
  replaced by dilated 3x3 convs (Yu & Koltun 2016; DeepLab, Chen et al. 2017, "output stride"
  16 or 8): the dense pretexts then predict from a finer map, as Zhang et al.'s colorization
  network does. The parameters, and so the state dicts, are unchanged.
* ViT (Dosovitskiy et al., ICLR 2021), in `methods.vision_transformer`: class token, learned
  position embeddings, any multiple of the patch size, MAE- and SimMIM-style masked inputs.
* ``dvae_encoder`` (`methods.discrete_vae`): the dvae method's convolutional encoder to a grid of
  code logits, BEiT's tokenizer; built with the dvae's codebook size and width.

Every backbone returns pooled features ``(B, feature_dim)`` from ``forward`` and has an int
attribute ``feature_dim`` and a ``kind``, ``"resnet"``, ``"vit"`` or ``"conv"`` (``methods.protocol.BackboneKind``).
``build_backbone(name, **kwargs)`` returns ``(module, feature_dim)``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods.discrete_vae import dvae_encoder
from selfsup.methods.protocol import BackboneKind
from selfsup.methods.vision_transformer import vit_base, vit_small, vit_tiny

# --------------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34). Output channels = planes."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 first_dilation: int | None = None):
        super().__init__()
        first = first_dilation or dilation
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, first, dilation=first, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(in_channels, planes, stride)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, with a residual connection (ResNet-50+).

    Output channels = 4 * planes.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 first_dilation: int | None = None):
        super().__init__()
        out_channels = planes * self.expansion
        first = first_dilation or dilation
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, first, dilation=first, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """1x1 conv + BN projection when the shape changes, else None (identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class ResNet(nn.Module):
    """ResNet trunk without the classification layer.

    Input (B, 3, H, W) -> ``forward`` (B, feature_dim) globally average-pooled features;
    ``forward_features`` (B, feature_dim, H/s, W/s) with ``output_stride`` s = 32 (8 with
    ``small_input``), halved by each of the ``dilated_stages`` last stages.

    In a dilated stage the first block's first 3x3 conv keeps the previous dilation and every
    other 3x3 conv doubles it, as torchvision's ``replace_stride_with_dilation`` does.
    """

    kind: BackboneKind = "resnet"

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        zero_init_residual: bool = False,
        small_input: bool = False,
        in_channels: int = 3,
        dilated_stages: int = 0,
    ):
        super().__init__()
        if dilated_stages not in (0, 1, 2):
            raise ValueError(f"dilated_stages={dilated_stages!r}: expected 0, 1 or 2 (the last stages "
                             "whose stride becomes a dilation)")
        if small_input:  # CIFAR stem: keep the resolution of 32-64 px images
            self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)

        channels, dilation = 64, 1
        self.output_stride: int = 1 if small_input else 4
        stages = []
        for index, (planes, num_blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride, previous_dilation = (1 if index == 0 else 2), dilation
            if index >= 4 - dilated_stages:
                dilation, stride = dilation * stride, 1
            self.output_stride *= stride
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(block(channels, planes, stride if block_index == 0 else 1, dilation,
                                    previous_dilation if block_index == 0 else dilation))
                channels = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim: int = channels

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:  # each residual branch starts as zero: the block is an identity
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_norm().weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x), 1), 1)


def resnet18(**kwargs) -> ResNet:
    """ResNet-18: 11.18M parameters without fc, feature_dim 512."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50: 23.5M parameters without fc, feature_dim 2048."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "vit_base": vit_base,
    "dvae_encoder": dvae_encoder,  # the dvae method's encoder (its logits are over method.codebook_size)
}


def build_backbone(name: str, **kwargs) -> tuple[nn.Module, int]:
    """Build a registered backbone: returns ``(module, feature_dim)``.

    ``kwargs`` go to the constructor (e.g. ``small_input=True`` for ResNets, ``img_size=96``
    or ``use_mask_token=True`` for ViTs). Unknown names raise a KeyError listing known ones.
    """
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known backbones: {sorted(BACKBONES)}")
    module = BACKBONES[name](**kwargs)
    return module, int(module.feature_dim)

