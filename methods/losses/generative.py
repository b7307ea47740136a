"""Generative-pretext losses: adversarial terms, pixel and content reconstruction, denoising.

* Adversarial (Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014): the
  discriminator's binary cross-entropy on real and generated samples (Eq. 1), and the
  generator's non-saturating loss ``-log D(G(z))`` (Sec. 3), as the context encoder (Pathak et
  al. 2016, Eq. 2-3) and SRGAN (Ledig et al. 2017, Eq. 6-7) use them.
* Pixel (SRGAN's MSE content loss, Ledig et al. 2017, Eq. 4) and feature-space content loss
  (SRGAN's VGG loss, Eq. 5; Johnson et al. 2016's feature reconstruction loss).
* Denoising (Vincent, Larochelle, Bengio & Manzagol, "Extracting and Composing Robust Features
  with Denoising Autoencoders", ICML 2008): the squared reconstruction error of the clean input
  from the corrupted one (Sec. 2.3, the squared error for real-valued inputs).

All functions are pure; logits are unbounded scores (the sigmoid is inside the loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss (Goodfellow et al. 2014, Eq. 1, maximised by D; here minimised).

    Args:
        real_logits: (N,) or (N, 1) scores of real samples, ``D(x) = sigmoid(real_logits)``.
        fake_logits: (M,) or (M, 1) scores of generated samples (computed from generator outputs
            that are detached, so that this loss trains only the discriminator).

    Returns the scalar ``-mean log D(x) - mean log(1 - D(G(z)))``: the binary cross-entropy of
    the real samples against label 1 plus that of the generated ones against label 0 (each a
    mean over its samples), ``2 ln 2`` for a discriminator that cannot tell them apart.
    """
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating adversarial loss (Goodfellow et al. 2014, Sec. 3; SRGAN's
    ``l_Gen``, Ledig et al. 2017, Eq. 6).

    Args:
        fake_logits: (N,) or (N, 1) the discriminator's scores of generated samples (with the
            gradient flowing back into the generator).

    Returns the scalar ``-mean log D(G(z))``, the binary cross-entropy against label 1
    (stronger gradients early in training than minimising ``log(1 - D(G(z)))``).
    """
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def pixel_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SRGAN's pixel-wise MSE (Ledig et al. 2017, Eq. 4).

    Args:
        prediction: (B, C, H, W) super-resolved (or reconstructed) images.
        target: (B, C, H, W) high-resolution images.

    Returns the scalar ``sum (prediction - target)^2 / (B * C * H * W)``.
    """
    return (prediction - target).pow(2).mean()


def content_loss(prediction_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """SRGAN's content loss in a feature network's space (Ledig et al. 2017, Eq. 5, the VGG loss).

    Args:
        prediction_features: (B, D, h, w) the feature network's map of the super-resolved images
            (with gradient).
        target_features: (B, D, h, w) its map of the high-resolution images (no gradient needed).

    Returns the scalar ``sum (phi(G(x)) - phi(y))^2 / (B * D * h * w)``, the paper's Eq. 5
    averaged over the batch too. (The paper rescales the VGG features by 1/12.75 to bring this
    loss to the pixel loss's range; that is a choice of weight, left to the caller.)
    """
    return (prediction_features - target_features).pow(2).mean()


def denoising_loss(reconstruction: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """The denoising autoencoder's reconstruction loss (Vincent et al. 2008, Sec. 2.3).

    Args:
        reconstruction: (B, C, H, W) the decoder's output for the corrupted input.
        clean: (B, C, H, W) the uncorrupted input (the corruption is drawn by the data pipeline).

    Returns the scalar mean squared error over every pixel, corrupted or not: the network has to
    reproduce the clean image, not only undo the corruption where it happened (the paper's
    ``L(x, z)`` for real-valued x, averaged instead of summed).
    """
    return F.mse_loss(reconstruction, clean)


__all__ = ["content_loss", "denoising_loss", "discriminator_loss", "generator_adversarial_loss", "pixel_loss"]
