"""Masked image modeling losses: MAE, SimMIM and BEiT, with the patch (un)folding they share.

Masks are bool tensors (B, N), N = (H / p) * (W / p), patches numbered row-major,
True = masked (hidden from the encoder, to be reconstructed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into flattened patches: (B, C, H, W) -> (B, N, p * p * C).

    N = (H / p) * (W / p), row-major; each patch is flattened in (row, column, channel) order,
    the layout of MAE's ``patchify``.
    """
    batch, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not a multiple of {patch_size}")
    rows, columns = height // patch_size, width // patch_size
    x = images.reshape(batch, channels, rows, patch_size, columns, patch_size)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, rows, columns, p, p, C)
    return x.reshape(batch, rows * columns, patch_size * patch_size * channels)


def unpatchify(
    patches: torch.Tensor, patch_size: int, image_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Inverse of ``patchify``: (B, N, p * p * C) -> (B, C, H, W).

    ``image_size`` = (H, W); when omitted the image is assumed square (N a perfect square).
    """
    batch, num_patches, patch_dim = patches.shape
    channels = patch_dim // (patch_size * patch_size)
    if image_size is None:
        side = int(round(num_patches**0.5))
        if side * side != num_patches:
            raise ValueError(f"{num_patches} patches is not a square grid; pass image_size")
        rows = columns = side
    else:
        rows, columns = image_size[0] // patch_size, image_size[1] // patch_size
    x = patches.reshape(batch, rows, columns, patch_size, patch_size, channels)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, rows, p, columns, p)
    return x.reshape(batch, channels, rows * patch_size, columns * patch_size)


def mae_loss(
    predictions: torch.Tensor,
    images: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    normalize_pixels: bool = True,
) -> torch.Tensor:
    """MAE reconstruction loss.

    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (``norm_pix_loss``).

    Args:
        predictions: (B, N, p * p * C) decoder outputs for every patch, ``patchify`` layout.
        images: (B, C, H, W) the (normalized) input images.
        mask: (B, N) bool, True = masked.
        patch_size: p.
        normalize_pixels: normalize each target patch by its own mean and (unbiased) variance,
            ``(x - mean) / sqrt(var + 1e-6)``, as the official code does.

    Returns the scalar mean over masked patches of the per-patch MSE (mean over p * p * C).
    """
    target = patchify(images, patch_size)
    if normalize_pixels:
        mean = target.mean(dim=-1, keepdim=True)
        variance = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (variance + 1.0e-6) ** 0.5
    per_patch = (predictions - target).pow(2).mean(dim=-1)  # (B, N)
    weight = mask.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum()


def simmim_loss(
    reconstruction: torch.Tensor,
    images: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
) -> torch.Tensor:
    """SimMIM reconstruction loss.

    Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022.

    Args:
        reconstruction: (B, C, H, W) predicted image.
        images: (B, C, H, W) target image.
        mask: (B, N) bool, N = (H / p) * (W / p), True = masked.
        patch_size: p, the size of one mask cell in pixels.

    Returns the scalar ``sum(|x_rec - x| * M) / (sum(M) + 1e-5) / C`` with M the pixel mask
    (one channel): the L1 error averaged over masked pixels and channels, as the official code.
    """
    batch, channels, height, width = images.shape
    rows, columns = height // patch_size, width // patch_size
    pixel_mask = mask.reshape(batch, rows, columns).to(images.dtype)
    pixel_mask = pixel_mask.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
    pixel_mask = pixel_mask.unsqueeze(1)  # (B, 1, H, W)
    error = F.l1_loss(reconstruction, images, reduction="none")
    return (error * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / channels


def normalize_locally(images: torch.Tensor, window: int) -> torch.Tensor:
    """Standardize every pixel by the mean and (unbiased) variance of its `window` x `window`
    neighbourhood, per channel: SimMIM's normalized reconstruction target.

    Xie et al., "On Data Scaling in Masked Image Modeling", CVPR 2023, and the official SimMIM
    code's ``NORM_TARGET`` (a 47 px window at 192 px). At the borders only the pixels inside the
    image count.

    Args:
        images: (B, C, H, W) float.
        window: odd, 3 or more.

    Returns (B, C, H, W): ``(x - mean) / sqrt(var + 1e-6)`` over each pixel's window.
    """
    if window < 3 or window % 2 == 0:
        raise ValueError(f"window={window}: expected an odd size of 3 or more")
    padding = window // 2
    images = images.float()
    mean = F.avg_pool2d(images, window, stride=1, padding=padding, count_include_pad=False)
    mean_square = F.avg_pool2d(images * images, window, stride=1, padding=padding, count_include_pad=False)
    count = F.avg_pool2d(torch.ones_like(images[:, :1]), window, stride=1, padding=padding,
                         count_include_pad=True) * window * window  # pixels inside the image
    variance = ((mean_square - mean * mean) * count / (count - 1)).clamp(min=0.0)
    return (images - mean) / (variance + 1e-6).sqrt()


def beit_loss(masked_logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BEiT's masked image modeling loss: predict the visual token of every masked patch.

    Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022, Sec. 2.3, Eq. 1: the
    log-likelihood of the tokenizer's codes at the masked positions, ``-mean_{i in M} ln
    softmax(W h_i + b)[z_i]``.

    Args:
        masked_logits: (M, K) the prediction for each masked patch, M = mask.sum(), in the order
            of ``tokens[mask]`` (sample by sample, patches in reading order within each).
        codes: (B, N) int64 in [0, K): the tokenizer's code of every patch.
        mask: (B, N) bool, True = masked.

    Returns the scalar mean cross-entropy over the M masked patches.
    """
    return F.cross_entropy(masked_logits, codes[mask])
