"""Discrete latent codes: the dVAE's evidence lower bound and how well a codebook is used.

Ramesh et al., "Zero-Shot Text-to-Image Generation" (DALL-E), ICML 2021, arXiv:2102.12092,
Sec. 2.1 and appendix A.2: an encoder gives, for each cell of a grid, a categorical distribution
q(z | x) over K codes; the decoder reconstructs the image from a Gumbel-softmax relaxed sample of
the codes; training maximizes the ELB ``E_q[ln p(x | z)] - beta * KL(q(z | x) || U(K))`` with a
uniform prior over the codes, whose KL term also keeps the encoder from using only a few codes.

Logits are (B, K, h, w): K codes per cell of an h x w grid (the code dimension is 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Mean over cells of KL(q || U(K)), q = softmax(logits) over dim 1.

    Args:
        logits: (B, K, h, w) (or (B, K)) code logits.

    Returns the scalar mean over the B * h * w cells of ``sum_k q_k (ln q_k + ln K)``
    = ``ln K - H(q)``: 0 for a uniform q, ln K for a one-hot one.
    """
    log_q = F.log_softmax(logits, dim=1)
    per_cell = (log_q.exp() * (log_q + math.log(logits.shape[1]))).sum(dim=1)  # (B, h, w)
    return per_cell.mean()


def dvae_loss(reconstruction: torch.Tensor, images: torch.Tensor, logits: torch.Tensor,
              kl_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dVAE's negative ELB per pixel value, with a Gaussian likelihood.

    DALL-E (Ramesh et al. 2021, appendix A.2) uses a logit-Laplace likelihood on pixels in (0, 1);
    here ``ln p(x | z)`` is a unit Gaussian on the normalized image (the mean squared error, as
    most open dVAE implementations), and both terms are means rather than sums, so `kl_weight`
    is DALL-E's beta times (cells / pixel values) up to the likelihood's scale.

    Args:
        reconstruction: (B, C, H, W) the decoder's output.
        images: (B, C, H, W) the (normalized) input.
        logits: (B, K, h, w) the encoder's code logits.
        kl_weight: beta, the weight of the KL term (0 during DALL-E's warm-up).

    Returns (loss, reconstruction_error, kl): ``mean((x_rec - x)^2) + kl_weight * kl_to_uniform``,
    the mean squared error and the mean KL per cell.
    """
    reconstruction_error = F.mse_loss(reconstruction, images)
    kl = kl_to_uniform(logits)
    return reconstruction_error + kl_weight * kl, reconstruction_error, kl


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """How many of the K codes a batch of codes uses, and how evenly.

    Args:
        codes: int64, any shape, values in [0, K): the chosen code of every cell.
        codebook_size: K.

    Returns (perplexity, used): ``exp(H(p))`` of the codes' histogram p (1 when every cell has
    the same code, K when the codes are spread evenly over all K), and the fraction of the K
    codes that occur at least once.
    """
    counts = torch.bincount(codes.reshape(-1), minlength=codebook_size).float()
    frequencies = counts / counts.sum()
    entropy = -(frequencies * torch.log(frequencies.clamp_min(1e-12))).sum()
    return entropy.exp(), (counts > 0).float().mean()
