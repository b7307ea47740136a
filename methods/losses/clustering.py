"""Clustering losses: SwAV's Sinkhorn-Knopp codes and swapped prediction; the pseudo-label
classification of DeepCluster and ODC, re-weighted by cluster size.

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
NeurIPS 2020. The feature queue (used for small batches) is the method's job: compute the codes
with ``sinkhorn_knopp`` on ``cat([queue_scores, scores])`` and keep the last B rows, then call
``swav_swapped_prediction``.

Caron, Bojanowski, Joulin & Douze, "Deep Clustering for Unsupervised Learning of Visual
Features", ECCV 2018 (DeepCluster); Zhan, Xie, Liu, Ong & Loy, "Online Deep Clustering for
Unsupervised Representation Learning", CVPR 2020 (ODC): ``cluster_size_weights`` and
``weighted_cluster_cross_entropy``.
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


def cluster_size_weights(sizes: torch.Tensor, power: float) -> torch.Tensor:
    """Per-cluster loss weights ``w_c = n_c^-power``, scaled so that the mean weight of a sample is 1.

    Args:
        sizes: (K,) number of samples with each pseudo-label (any integer or float dtype).
        power: 1 weighs every cluster alike whatever its size: in expectation over uniformly drawn
            samples, the loss of samples drawn uniformly over the clusters (DeepCluster, Sec. 3.3,
            which samples images "based on a uniform distribution over the classes"); 0.5 is ODC's
            re-weighting (Sec. 3.3, ``reweight_pow=0.5`` in the official code); 0 is no re-weighting.

    Returns (K,) float32: ``w_c = n / sum_j n_j^(1 - power) * n_c^-power`` for a non-empty
    cluster (n = sum_c n_c, so ``sum_c n_c w_c = n``), 0 for an empty one (no sample carries it).
    With power 1 that is ``n / (K' n_c)``, K' the number of non-empty clusters.
    """
    sizes = sizes.double()
    present = sizes > 0
    raw = torch.where(present, sizes.clamp(min=1.0) ** -power, torch.zeros_like(sizes))
    carried = (sizes * raw).sum()
    if float(carried) == 0.0:
        return raw.float()
    return (raw * sizes.sum() / carried).float()


def weighted_cluster_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                                   cluster_weights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a classifier against pseudo-labels, each sample weighted by its cluster.

    DeepCluster (Caron et al. 2018, Eq. 1 with the pseudo-labels of k-means, Sec. 3.3 against
    trivial solutions) and ODC (Zhan et al. 2020, Sec. 3.3, loss re-weighting).

    Args:
        logits: (B, K) classifier outputs.
        labels: (B,) int64 pseudo-labels in [0, K), or -1 for a sample without one (left out).
        cluster_weights: (K,) non-negative weights (``cluster_size_weights``), no gradient.

    Returns the scalar ``sum_i w[y_i] CE(logits_i, y_i) / sum_i w[y_i]`` over the labelled i, the
    mean of ``torch.nn.CrossEntropyLoss(weight=w)`` (ODC's official loss); 0, still attached to
    the graph, when no sample of the global batch is labelled. Under DDP (W ranks) the denominator
    is the weight of the global batch divided by W (all-reduced), so the mean of the ranks' losses
    is the loss of one process on the concatenated batch and DDP's averaged gradient its gradient.
    """
    labelled = labels >= 0
    safe_labels = labels.clamp(min=0)
    per_sample = F.cross_entropy(logits, safe_labels, reduction="none")  # (B,)
    weights = cluster_weights.to(per_sample.dtype)[safe_labels] * labelled  # (B,)
    total_weight = distributed.all_reduce_sum(weights.sum().detach()) / distributed.world_size()
    if float(total_weight) == 0.0:
        return per_sample.sum() * 0.0
    return (weights * per_sample).sum() / total_weight
