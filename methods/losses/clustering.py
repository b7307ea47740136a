"""Clustering losses: SwAV's Sinkhorn-Knopp codes and swapped prediction.

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
NeurIPS 2020. The feature queue (used for small batches) is the method's job: compute the codes
with ``sinkhorn_knopp`` on ``cat([queue_scores, scores])`` and keep the last B rows, then call
``swav_swapped_prediction``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from selfsup.methods import distributed


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3
) -> torch.Tensor:
    """Equipartitioned soft assignments of samples to prototypes (SwAV, Sec. 3.1, Eq. 3).

    Args:
        scores: (B, K) prototype scores (cosine similarities) of the local batch.
        epsilon: entropy regularization (0.05).
        iterations: Sinkhorn-Knopp iterations (3).

    Returns Q (B, K), no gradient: ``Q = diag(u) exp(scores / epsilon) diag(v)`` scaled so that
    every prototype receives B_total / K of the mass and every sample's row sums to 1
    (exactly after the last column step). As in the official ``distributed_sinkhorn``, the
    prototype (row) sums are all-reduced over ranks, so the equipartition holds over the global
    batch of B_total = B * W samples. The iterations run on log Q (log-sum-exp normalizations,
    in float32 at least), so scores far apart on the scale of epsilon (unbounded logits, small
    temperatures) cannot underflow a whole prototype to zero and divide by it; where the
    official exp-domain iterations do not underflow, the result is theirs.
    """
    log_q = (scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores) / epsilon
    log_q = log_q.T  # (K, B): prototypes x samples, paper layout
    num_prototypes = log_q.shape[0]
    total_samples = log_q.shape[1] * distributed.world_size()
    # the first normalization by the global total cancels in the first row step, so it is skipped
    for _ in range(iterations):
        # every prototype gets total mass 1/K (over all ranks)
        log_q = log_q - _global_log_sum_exp_rows(log_q) - math.log(num_prototypes)
        # every sample gets total mass 1/B_total
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(total_samples)
    return torch.exp(log_q + math.log(total_samples)).T  # (B, K), rows sum to 1


def _global_log_sum_exp_rows(log_q: torch.Tensor) -> torch.Tensor:
    """(K, 1) log of each row's sum of exp(log_q) over this rank's columns and every other rank's."""
    shift = distributed.all_reduce_max(log_q.max(dim=1, keepdim=True).values)
    return shift + torch.log(distributed.all_reduce_sum(torch.exp(log_q - shift).sum(dim=1, keepdim=True)))


def swav_swapped_prediction(
    scores: Sequence[torch.Tensor],
    codes: Mapping[int, torch.Tensor],
    temperature: float = 0.1,
) -> torch.Tensor:
    """SwAV swapped-prediction loss from precomputed codes (SwAV Eq. 1-2).

    Args:
        scores: V views of (B, K) prototype scores (gradients flow through these).
        codes: {view index: (B, K) codes Q} for the views used to compute assignments.
        temperature: tau (0.1).

    For each code view a: ``L_a = mean over views v != a of
    mean_b -sum_k Q_a[b, k] * log_softmax(scores_v / tau)[b, k]``.
    Returns the scalar mean of L_a over the code views, as the official code does.
    """
    log_predictions = [F.log_softmax(view / temperature, dim=1) for view in scores]
    total = log_predictions[0].new_zeros(())
    for code_view, q in codes.items():
        view_loss = log_predictions[0].new_zeros(())
        for view, log_prediction in enumerate(log_predictions):
            if view == code_view:
                continue
            view_loss = view_loss - (q.detach() * log_prediction).sum(dim=1).mean()
        total = total + view_loss / (len(log_predictions) - 1)
    return total / len(codes)


def swav_loss(
    scores_per_view: Sequence[torch.Tensor],
    assignments_for: Sequence[int] = (0, 1),
    temperature: float = 0.1,
    epsilon: float = 0.05,
    sinkhorn_iterations: int = 3,
) -> torch.Tensor:
    """SwAV loss without a queue: Sinkhorn codes for ``assignments_for`` views + swapped prediction.

    Args:
        scores_per_view: V views of (B, K) prototype scores (the 2 global crops first, then the
            multi-crop small crops).
        assignments_for: indices of the views whose codes are predicted (SwAV: the two global
            crops, ``crops_for_assign = [0, 1]``).
        temperature, epsilon, sinkhorn_iterations: tau (0.1), epsilon (0.05), iterations (3).

    Returns the scalar loss (see ``swav_swapped_prediction``).
    """
    codes = {
        view: sinkhorn_knopp(scores_per_view[view].detach(), epsilon, sinkhorn_iterations)
        for view in assignments_for
    }
    return swav_swapped_prediction(scores_per_view, codes, temperature)
