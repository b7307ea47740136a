"""The generative recipes' graphs on real shards: super-resolution's input is the target downscaled x4
and upscaled back with bicubic interpolation, denoising drops whole pixels or adds Gaussian noise of
the asked strength, drawn per sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.pipeline.dataset import load_dataset_info
from selfsup.pipeline.loader import build_train_loader
from selfsup.pipeline.recipes import IMAGENET_STD, denoising_recipe, super_resolution_recipe
from tests.pipeline.pattern_shards import first_batch, noise_images, to_pixels, write_pattern_shards


@pytest.fixture(scope="module")
def noise_shards(tmp_path_factory):
    """8 noise images of 48 px: all detail, the hardest case for an interpolation to agree on."""
    return load_dataset_info(write_pattern_shards(tmp_path_factory.mktemp("noise"), noise_images(8, 48, seed=3)))


def pixels(normalized: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) normalized -> (B, 3, h, w) in [0, 1]."""
    return torch.from_numpy(to_pixels(normalized)).permute(0, 3, 1, 2) / 255.0


def resampled(images: torch.Tensor, mode: str) -> torch.Tensor:
    """An independent x4 down (antialiased, rounded to 8 bits) and up again, with torch's `mode`."""
    low = F.interpolate(images, scale_factor=0.25, mode=mode, antialias=True, align_corners=False)
    low = (low * 255).round().clamp(0, 255) / 255
    return F.interpolate(low, size=images.shape[-2:], mode=mode, align_corners=False).clamp(0, 1)


def test_super_resolution_input_is_the_target_bicubically_down_and_up(noise_shards):
    recipe = super_resolution_recipe(32)
    batch = first_batch(build_train_loader(noise_shards, recipe, batch_size=8, seed=0, num_threads=1))
    target, upscaled = pixels(batch["sr_target"]), pixels(batch["sr_input"])
    def error(reference: torch.Tensor) -> float:
        return float((upscaled - reference).abs().mean()) * 255  # mean difference in 8-bit levels

    assert error(resampled(target, "bicubic")) < 2.0  # DALI's and torch's cubic kernels differ a little
    assert error(resampled(target, "bilinear")) > 2.5  # another interpolation is told apart
    assert error(target) > 20.0  # the detail is gone
    assert recipe.views[0].jitter_probability == 0.0 and recipe.pretext.scale_factor == 4


def test_masking_noise_drops_a_quarter_of_the_pixels_all_channels_together(demo_shards):
    recipe = denoising_recipe(32, corruption="masking", drop_probability=0.25)
    batch = first_batch(build_train_loader(load_dataset_info(demo_shards), recipe, batch_size=8, seed=0,
                                           num_threads=1))
    corrupted, clean = batch["denoise_input"], batch["denoise_target"]
    dropped = (corrupted == 0).all(dim=1, keepdim=True)  # (B, 1, S, S); a clean pixel is never exactly the mean
    assert not (clean == 0).all(dim=1).any()
    assert float(dropped.float().mean()) == pytest.approx(0.25, abs=0.03)
    assert torch.equal(corrupted.masked_select(~dropped), clean.masked_select(~dropped))
    assert ((corrupted == 0) == dropped).all()  # never one channel alone
    assert not torch.equal(dropped[0], dropped[1])  # drawn per sample


def test_gaussian_noise_has_the_asked_strength_in_pixel_units(demo_shards):
    recipe = denoising_recipe(32, corruption="gaussian", noise_std=0.1)
    batch = first_batch(build_train_loader(load_dataset_info(demo_shards), recipe, batch_size=8, seed=0,
                                           num_threads=1))
    noise = (batch["denoise_input"] - batch["denoise_target"]) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for channel in range(3):  # in [0, 1] pixel units on every channel alike
        assert float(noise[:, channel].std()) == pytest.approx(0.1, rel=0.05)
        assert abs(float(noise[:, channel].mean())) < 0.01
    correlation = np.corrcoef(noise[0].flatten().numpy(), noise[1].flatten().numpy())[0, 1]
    assert abs(correlation) < 0.05  # independent draws per sample
