"""Contrastive (InfoNCE-family) losses: SimCLR, MoCo v1/v2, MoCo v3, NNCLR.

Under DDP (``torch.distributed`` initialized, world size W > 1) the losses that use in-batch
negatives gather the candidates from every rank. ``nt_xent`` and ``nnclr_loss`` gather with
gradients, so with DDP's gradient averaging the update equals the single-process update on the
concatenated batch. ``moco_v3_loss`` gathers its (momentum-encoder) keys without gradients, as
the official code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.methods import distributed


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR.

    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
    ICML 2020.

    Args:
        z1, z2: (N, D) projections of two views of the same N images (any scale; they are
            L2-normalized here). Row i of ``z1`` and row i of ``z2`` are a positive pair.
        temperature: tau (0.5 in the paper's CIFAR setting; 0.1 - 0.2 for large batches).

    Returns:
        Scalar: the mean over the 2N anchors a of
        ``-log( exp(s(a, a+)/tau) / sum_{c != a} exp(s(a, c)/tau) )``, s = cosine similarity,
        where the 2N - 1 candidates c are every other sample (its positive and 2N - 2
        negatives). The official TensorFlow code sums the two halves' means (= 2x this value).

    Under DDP with W ranks each holding N pairs, the candidates are the 2NW gathered samples
    (gathered with gradients) and the mean is over the 2N local anchors.
    """
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    batch = z1.shape[0]
    world_size, rank = distributed.world_size(), distributed.rank()
    global_batch = batch * world_size

    anchors = torch.cat([z1, z2], dim=0)  # (2N, D)
    candidates = torch.cat(
        [distributed.gather_with_grad(z1), distributed.gather_with_grad(z2)], dim=0
    )  # (2NW, D): [all z1 of rank 0..W-1, all z2 of rank 0..W-1]
    logits = anchors @ candidates.T / temperature  # (2N, 2NW)

    local = torch.arange(batch, device=z1.device) + rank * batch  # global row of each pair
    self_index = torch.cat([local, local + global_batch])  # (2N,)
    positive_index = torch.cat([local + global_batch, local])  # (2N,)
    is_self = F.one_hot(self_index, 2 * global_batch).bool()  # (2N, 2NW)
    logits = logits.masked_fill(is_self, float("-inf"))  # an anchor is not its own candidate
    return F.cross_entropy(logits, positive_index)


def infonce(
    query: torch.Tensor,
    positive_key: torch.Tensor,
    negative_keys: torch.Tensor,
    temperature: float = 0.2,
) -> torch.Tensor:
    """InfoNCE with an external set of negatives, as in MoCo.

    He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020
    (tau = 0.07); MoCo v2 (Chen et al. 2020) uses tau = 0.2. Oord et al. 2018 for InfoNCE.

    Args:
        query: (N, D) query embeddings q.
        positive_key: (N, D) key k+ of each query (momentum encoder output: pass it detached).
        negative_keys: (K, D) shared negatives (MoCo's queue).
        temperature: tau.

    All inputs are L2-normalized here. Returns the scalar mean over the N queries of
    ``-log( exp(q.k+/tau) / (exp(q.k+/tau) + sum_k exp(q.k_k/tau)) )``.
    Gradients flow into whatever inputs require them; MoCo's keys carry none.
    """
    query = F.normalize(query, dim=1)
    positive_key = F.normalize(positive_key, dim=1)
    negative_keys = F.normalize(negative_keys, dim=1)
    positive = (query * positive_key).sum(dim=1, keepdim=True)  # (N, 1)
    negative = query @ negative_keys.T  # (N, K)
    logits = torch.cat([positive, negative], dim=1) / temperature
    labels = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, labels)


def moco_v3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo v3 contrastive loss (one direction; the method symmetrizes: loss(q1,k2)+loss(q2,k1)).

    Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers",
    ICCV 2021.

    Args:
        q: (N, D) predictor outputs of the base encoder for one view.
        k: (N, D) momentum-encoder outputs for the other view (no gradient needed).
        temperature: tau (0.2 for ViT, 1.0 for ResNet in the paper).

    Returns ``2 * tau * CE(q @ k_all.T / tau, positives)`` (scalar, mean over the N queries),
    q and k L2-normalized, where ``k_all`` (NW, D) are the keys of every rank, gathered without
    gradients; query i of rank r has its positive at global index r * N + i. The 2 tau factor
    is the official code's (it makes the gradient scale independent of tau).
    """
    q = F.normalize(q, dim=1)
    k = distributed.gather_no_grad(F.normalize(k, dim=1).detach())
    logits = q @ k.T / temperature  # (N, NW)
    batch = q.shape[0]
    labels = torch.arange(batch, device=q.device) + distributed.rank() * batch
    return F.cross_entropy(logits, labels) * (2 * temperature)


def nnclr_loss(
    nearest_neighbors: torch.Tensor, predictions: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """NNCLR loss (one direction; the method symmetrizes over the two views).

    Dwibedi et al., "With a Little Help from My Friends: Nearest-Neighbor Contrastive Learning
    of Visual Representations", ICCV 2021, Eq. 2.

    Args:
        nearest_neighbors: (N, D) support-set nearest neighbours NN(z_i) of view-1 embeddings
            (taken from a queue, so normally without gradient).
        predictions: (N, D) predictor outputs p_i of view 2.
        temperature: tau (0.1 in the paper).

    Returns the scalar mean over i of
    ``-log( exp(NN_i . p_i / tau) / sum_k exp(NN_i . p_k / tau) )``
    with both inputs L2-normalized. Under DDP, the p_k are gathered from all ranks with gradients.
    """
    nearest_neighbors = F.normalize(nearest_neighbors, dim=1)
    predictions = F.normalize(predictions, dim=1)
    candidates = distributed.gather_with_grad(predictions)  # (NW, D)
    logits = nearest_neighbors @ candidates.T / temperature  # (N, NW)
    batch = predictions.shape[0]
    labels = torch.arange(batch, device=predictions.device) + distributed.rank() * batch
    return F.cross_entropy(logits, labels)


def npid_nce_loss(
    positive_scores: torch.Tensor,
    negative_scores: torch.Tensor,
    normalizer: torch.Tensor | float,
    num_samples: int,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Noise-contrastive estimation of the non-parametric softmax of instance discrimination.

    Wu, Xiong, Yu & Lin, "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination", CVPR 2018, Eq. 2 and 5-6 (NCE: Gutmann & Hyvarinen 2010).

    Args:
        positive_scores: (B,) ``v_i . f_i``, the feature against its own memory-bank entry.
        negative_scores: (B, M) ``v_j . f_i`` against M noise entries drawn uniformly from the
            bank (P_n = 1 / n).
        normalizer: Z, the partition-function estimate (the official code fixes it from the
            first batch: ``Z = n * mean(exp(scores / tau))``).
        num_samples: n, the number of instances (memory-bank rows).
        temperature: tau (0.07).

    With ``P(i | v) = exp(v . f_i / tau) / Z`` and ``h(i, v) = P(i|v) / (P(i|v) + M P_n)``,
    returns the scalar ``mean_b [ -log h(i, v_i) - sum_j log(1 - h(i, v_j)) ]`` (Eq. 6, summed
    over the M noise samples and averaged over the batch, as the official NCECriterion).
    """
    noise = negative_scores.shape[1] / num_samples  # M * P_n
    positive = torch.exp(positive_scores / temperature) / normalizer  # (B,)
    negative = torch.exp(negative_scores / temperature) / normalizer  # (B, M)
    log_h_positive = torch.log(positive / (positive + noise))
    log_one_minus_h_negative = torch.log(noise / (negative + noise))
    return -(log_h_positive + log_one_minus_h_negative.sum(dim=1)).mean()
