"""Redundancy-reduction losses: Barlow Twins and VICReg.

Both use batch statistics. Under DDP they are computed over the global batch with
differentiable collectives, so with DDP's gradient averaging the update equals the
single-process update on the concatenated batch. (The official Barlow Twins code all-reduces
the cross-correlation without autograd, which scales the gradient by 1/W; here it is exact.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.methods import distributed


def _off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """All off-diagonal entries of a square (D, D) matrix, flattened: (D * D - D,)."""
    size = matrix.shape[0]
    return matrix.flatten()[:-1].view(size - 1, size + 1)[:, 1:].flatten()


def _standardize_global(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(z - mean) / sqrt(biased var + eps) per dimension over the (global) batch: (N, D) -> (N, D).

    Equals ``BatchNorm1d(D, affine=False)`` in training mode (SyncBatchNorm under DDP).
    """
    count = z.shape[0] * distributed.world_size()
    mean = distributed.all_reduce_sum(z.sum(dim=0)) / count
    centered = z - mean
    variance = distributed.all_reduce_sum(centered.pow(2).sum(dim=0)) / count
    return centered / torch.sqrt(variance + eps)


def barlow_twins(
    z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float = 5e-3
) -> torch.Tensor:
    """Barlow Twins redundancy-reduction loss.

    Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
    ICML 2021, Eq. 1.

    Args:
        z1, z2: (N, D) projector outputs of two views (row i of each from the same image).
        lambda_offdiag: lambda, the weight of the off-diagonal term (5e-3).

    Each dimension is standardized over the batch, ``zn = (z - mean) / sqrt(var_biased + 1e-5)``
    (the official ``BatchNorm1d(affine=False)``), ``C = z1n.T @ z2n / N`` (D, D), and
    ``loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2`` (scalar).
    Under DDP, mean/variance and C are summed over ranks and N is the global batch size; every
    rank returns the same (global) value.
    """
    z1 = _standardize_global(z1)
    z2 = _standardize_global(z2)
    count = z1.shape[0] * distributed.world_size()
    correlation = distributed.all_reduce_sum(z1.T @ z2) / count  # (D, D)
    on_diagonal = (1 - torch.diagonal(correlation)).pow(2).sum()
    off_diagonal = _off_diagonal(correlation).pow(2).sum()
    return on_diagonal + lambda_offdiag * off_diagonal


def vicreg_terms(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """VICReg's three terms and their weighted total (see ``vicreg``).

    Returns ``{"loss", "invariance", "variance", "covariance"}``, all scalars; the three terms
    are unweighted and ``loss = sim_weight * invariance + var_weight * variance +
    cov_weight * covariance``.
    """
    batch, dim = z1.shape
    invariance = F.mse_loss(z1, z2)  # local batch, like the official code

    z1 = distributed.gather_with_grad(z1)  # (NW, D)
    z2 = distributed.gather_with_grad(z2)
    global_batch = z1.shape[0]
    z1 = z1 - z1.mean(dim=0)
    z2 = z2 - z2.mean(dim=0)

    std1 = torch.sqrt(z1.var(dim=0) + 1e-4)  # unbiased variance, as torch.var in the paper
    std2 = torch.sqrt(z2.var(dim=0) + 1e-4)
    variance = F.relu(1 - std1).mean() / 2 + F.relu(1 - std2).mean() / 2

    cov1 = z1.T @ z1 / (global_batch - 1)  # (D, D)
    cov2 = z2.T @ z2 / (global_batch - 1)
    covariance = (
        _off_diagonal(cov1).pow(2).sum() / dim + _off_diagonal(cov2).pow(2).sum() / dim
    )

    loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance
    return {
        "loss": loss,
        "invariance": invariance,
        "variance": variance,
        "covariance": covariance,
    }


def vicreg(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
) -> torch.Tensor:
    """VICReg: variance-invariance-covariance regularization.

    Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning", ICLR 2022, Eqs. 1-6, as in the official code.

    Args:
        z1, z2: (N, D) expander outputs of two views.
        sim_weight, var_weight, cov_weight: lambda, mu, nu (25, 25, 1).

    Terms (scalars):
        invariance: ``mean((z1 - z2)^2)`` over the local batch and dims.
        variance: ``sum over branches of mean_j relu(1 - sqrt(Var(z_j) + 1e-4)) / 2``
            (unbiased variance over the batch).
        covariance: ``sum over branches of sum_{i != j} Cov(z)_ij^2 / D`` with
            ``Cov = zc.T zc / (N - 1)``, zc centered.

    Under DDP the variance and covariance terms use the embeddings gathered from all ranks
    (with gradients) and are identical on every rank; the invariance term stays local, so the
    mean of the returned loss over ranks equals the single-process loss on the whole batch.
    """
    return vicreg_terms(z1, z2, sim_weight, var_weight, cov_weight)["loss"]
