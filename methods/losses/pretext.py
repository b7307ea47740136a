"""Pretext-task losses: rotation / jigsaw / relative location, colorization, inpainting.

* Rotation (Gidaris et al. 2018), jigsaw (Noroozi & Favaro 2016) and relative patch location
  (Doersch et al. 2015) are classification problems: ``classification_loss``.
* Colorization (Zhang, Isola & Efros, "Colorful Image Colorization", ECCV 2016): class-rebalanced
  multinomial cross-entropy over quantized ab bins.
* Inpainting (Pathak et al., "Context Encoders: Feature Learning by Inpainting", CVPR 2016):
  masked L2 reconstruction with a heavier weight on the band overlapping the context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for a classification task: a pretext's labels, or the class labels of `supervised`.

    Args:
        logits: (N, C) scores, e.g. C = 4 rotations, C = number of jigsaw permutations,
            C = 8 relative patch positions.
        labels: (N,) long class indices.

    Returns the scalar mean ``-log softmax(logits)[label]``.
    """
    return F.cross_entropy(logits, labels)


def rebalancing_weights(prior: torch.Tensor, lambda_: float = 0.5) -> torch.Tensor:
    """Class-rebalancing weights of colorization (Zhang et al. 2016, Eq. 3-4).

    Args:
        prior: (Q,) empirical probability of each ab bin (the paper smooths it with a Gaussian
            first; that is the caller's choice).
        lambda_: mixing weight with the uniform distribution (0.5).

    Returns (Q,) ``w = ((1 - lambda) p + lambda / Q)^-1`` scaled so that ``sum_q p_q w_q = 1``.
    """
    prior = prior / prior.sum()
    num_bins = prior.shape[0]
    weights = 1.0 / ((1.0 - lambda_) * prior + lambda_ / num_bins)
    return weights / (prior * weights).sum()


def colorization_loss(
    logits: torch.Tensor,
    target_bins: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-rebalanced multinomial cross-entropy of colorization (Zhang et al. 2016, Eq. 2).

    Args:
        logits: (B, Q, H, W) scores over Q quantized ab bins per pixel.
        target_bins: (B, H, W) long bin index per pixel, or a (B, Q, H, W) float soft encoding
            (the paper's 5-nearest-bins Gaussian encoding).
        class_weights: (Q,) rebalancing weights (``rebalancing_weights``) or None for uniform.

    ``L = - sum_{b,h,w} v(Z_bhw) sum_q Z_bhwq log softmax(logits)_bhwq / (B * H * W)``, with
    ``v(Z) = class_weights[argmax_q Z]``. The paper sums over pixels; dividing by the number of
    pixels (not by the sum of weights) keeps the scale independent of the batch and image size
    while ``E_p[w] = 1`` keeps it comparable to the unweighted loss.
    """
    log_probabilities = F.log_softmax(logits, dim=1)  # (B, Q, H, W)
    if target_bins.dtype == torch.long:
        per_pixel = -log_probabilities.gather(1, target_bins.unsqueeze(1)).squeeze(1)
        hard_bins = target_bins
    else:
        per_pixel = -(target_bins * log_probabilities).sum(dim=1)
        hard_bins = target_bins.argmax(dim=1)
    if class_weights is not None:
        per_pixel = per_pixel * class_weights.to(per_pixel.dtype)[hard_bins]
    return per_pixel.mean()


def inpainting_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    region_mask: torch.Tensor,
    overlap_weight: float = 10.0,
    overlap_pixels: int = 4,
) -> torch.Tensor:
    """Context-encoder reconstruction loss (Pathak et al. 2016, Eq. 1 and Sec. 3.2).

    Args:
        reconstruction: (B, C, H, W) generator output (only the predicted area matters).
        target: (B, C, H, W) original images.
        region_mask: (B, 1, H, W), (B, H, W) or (H, W), bool or {0, 1}: the dropped region.
        overlap_weight: weight of the band of context pixels the generator also predicts (10).
        overlap_pixels: width of that band around the region (4 in the paper's official code;
            0 = the plain masked L2 of Eq. 1).

    The predicted area is the region dilated by ``overlap_pixels`` (a square neighbourhood);
    region pixels weigh 1 and band pixels ``overlap_weight``. Returns the scalar
    ``sum(weight * (reconstruction - target)^2) / (C * number of predicted pixels)``, i.e. the
    weighted mean squared error over the predicted area, like the official weighted MSE.
    """
    mask = region_mask.to(target.dtype)
    while mask.ndim < 4:
        mask = mask.unsqueeze(0) if mask.ndim == 2 else mask.unsqueeze(1)
    if overlap_pixels > 0:
        kernel = 2 * overlap_pixels + 1
        predicted = F.max_pool2d(mask, kernel, stride=1, padding=overlap_pixels)
    else:
        predicted = mask
    weight = mask + overlap_weight * (predicted - mask)  # 1 in the region, w in the band
    weight = weight.expand(target.shape[0], 1, *target.shape[-2:])
    squared_error = (reconstruction - target).pow(2)
    return (squared_error * weight).sum() / (predicted.expand_as(weight).sum() * target.shape[1])
