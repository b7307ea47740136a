"""The generative-pretext losses against references written independently here, element by element
from the papers' formulas (float64): GAN terms (Goodfellow et al. 2014), SRGAN's pixel and content
losses (Ledig et al. 2017), the denoising autoencoder's squared error (Vincent et al. 2008)."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.methods import losses


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def test_discriminator_loss_is_the_cross_entropy_of_real_against_one_and_fake_against_zero():
    real, fake = randn(6) * 3, randn(4) * 3
    expected = (-sum(math.log(sigmoid(float(r))) for r in real) / 6
                - sum(math.log(1.0 - sigmoid(float(f))) for f in fake) / 4)
    assert float(losses.discriminator_loss(real, fake)) == pytest.approx(expected, rel=1e-12)
    assert float(losses.discriminator_loss(real[:, None], fake[:, None])) == pytest.approx(expected, rel=1e-12)


def test_discriminator_loss_limits():
    undecided = torch.zeros(5, dtype=torch.float64)  # D = 1/2 everywhere
    assert float(losses.discriminator_loss(undecided, undecided)) == pytest.approx(2 * math.log(2))
    sure = torch.full((5,), 40.0, dtype=torch.float64)
    assert float(losses.discriminator_loss(sure, -sure)) < 1e-15  # right on both: no loss
    assert float(losses.discriminator_loss(-sure, sure)) == pytest.approx(80.0)  # wrong on both


def test_generator_adversarial_loss_is_minus_log_d_of_the_generated():
    fake = randn(7) * 2
    expected = -sum(math.log(sigmoid(float(f))) for f in fake) / 7
    assert float(losses.generator_adversarial_loss(fake)) == pytest.approx(expected, rel=1e-12)
    # non-saturating: where D rejects the fakes confidently the gradient stays large (log(1 - D) would vanish)
    rejected = torch.full((3,), -10.0, dtype=torch.float64, requires_grad=True)
    losses.generator_adversarial_loss(rejected).backward()
    assert rejected.grad.abs().min() > 0.3


def test_pixel_and_content_losses_are_mean_squared_differences():
    prediction, target = randn(2, 3, 4, 5), randn(2, 3, 4, 5)
    total = sum((float(p) - float(t)) ** 2 for p, t in zip(prediction.flatten(), target.flatten()))
    assert float(losses.pixel_loss(prediction, target)) == pytest.approx(total / (2 * 3 * 4 * 5), rel=1e-12)
    features, target_features = randn(2, 16, 3, 3), randn(2, 16, 3, 3)
    total = sum((float(p) - float(t)) ** 2 for p, t in zip(features.flatten(), target_features.flatten()))
    assert float(losses.content_loss(features, target_features)) == pytest.approx(total / (2 * 16 * 9), rel=1e-12)


def test_denoising_loss_scores_every_pixel_not_only_the_corrupted_ones():
    clean = randn(2, 3, 6, 6)
    reconstruction = clean.clone()
    assert float(losses.denoising_loss(reconstruction, clean)) == 0.0
    reconstruction[0, 1, 2, 3] += 2.0  # one pixel wrong, wherever the corruption was
    assert float(losses.denoising_loss(reconstruction, clean)) == pytest.approx(4.0 / (2 * 3 * 36), rel=1e-12)
