"""Discriminators of the adversarial pretexts: images in, one real-vs-generated logit per image out.

* ``ContextEncoderDiscriminator``: the context encoder's (Pathak et al. 2016, Sec. 3.2 and the
  official code), a DCGAN discriminator (Radford, Metz & Chintala 2016): `stages` 4x4
  convolutions of stride 2 (BatchNorm from the second on, LeakyReLU 0.2), channels doubling from
  `width` (up to 8 x `width`), then a 4x4 convolution over the 4x4 map to one logit. The paper's
  64 px region leaves a 4x4 map after its 4 stages; another size is average-pooled to 4x4 first.
  It looks at the filled region only.
* ``SRGANDiscriminator``: SRGAN's (Ledig et al. 2017, Fig. 4): 3x3 convolutions with LeakyReLU
  0.2 (and BatchNorm but on the first): `width` channels at stride 1 and 2, then for each further
  stage 2x the channels (up to 8 x `width`) at stride 1 and 2, `stages` halvings in all (the
  paper's 4: 64, 64/2, 128, 128/2, 256, 256/2, 512, 512/2), then a dense layer of 16 x `width`
  and a dense layer to the logit. Simplification: the last map is averaged over space before the dense
  layers (the paper flattens its 6x6 map of a 96 px crop), so that any image size fits.

``forward(images)``: (B, 3, H, W) -> (B,) logits (the sigmoid is in the losses).
"""

from __future__ import annotations

import torch
from torch import nn


class ContextEncoderDiscriminator(nn.Module):
    def __init__(self, width: int = 64, stages: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        channels_in = width
        for _ in range(stages - 1):
            channels = min(2 * channels_in, 8 * width)
            layers += [nn.Conv2d(channels_in, channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(channels), nn.LeakyReLU(0.2, inplace=True)]
            channels_in = channels
        # DCGAN's last 4x4 convolution over the 4x4 map of a 64 px region; other sizes pooled to 4x4
        layers += [nn.AdaptiveAvgPool2d(4), nn.Conv2d(channels_in, 1, 4)]
        self.net = nn.Sequential(*layers)
        self.stages = stages

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if min(images.shape[-2:]) < 2 ** self.stages:
            raise ValueError(f"a region of {tuple(images.shape[-2:])} px is too small for {self.stages} stride-2 "
                             f"stages; it needs {2 ** self.stages} px or more")
        return self.net(images).flatten()  # (B,)


class SRGANDiscriminator(nn.Module):
    def __init__(self, width: int = 64, stages: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        channels_in = width
        for stage in range(stages):
            channels = width * 2 ** min(stage, 3)
            for stride in ((2,) if stage == 0 else (1, 2)):
                layers += [nn.Conv2d(channels_in, channels, 3, stride=stride, padding=1, bias=False),
                           nn.BatchNorm2d(channels), nn.LeakyReLU(0.2, inplace=True)]
                channels_in = channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(channels_in, 16 * width), nn.LeakyReLU(0.2, inplace=True),
                                        nn.Linear(16 * width, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.features(images).mean(dim=(2, 3))  # (B, 8 * width)
        return self.classifier(pooled).squeeze(1)
