"""Weighted k-nearest-neighbour classification of frozen features.

Wu, Xiong, Yu & Lin 2018, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination" (sec. 3.4, weighted kNN), as used by DINO's `eval_knn.py` (Caron et al. 2021):
cosine similarity to a labelled feature bank, the k most similar bank entries vote for their
class with weight exp(similarity / temperature).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["knn_accuracy", "weighted_knn_predict"]

SIMILARITY_BUDGET = 2**24  # similarities per block of queries: 64 MiB in float32


def _check_inputs(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                  num_classes: int, k: int, temperature: float, exclude_self: bool) -> None:
    if train_features.ndim != 2 or query_features.ndim != 2:
        raise ValueError(f"features must be 2-d (N, D) and (M, D); got train {tuple(train_features.shape)} "
                         f"and query {tuple(query_features.shape)}")
    if train_features.shape[1] != query_features.shape[1]:
        raise ValueError(f"feature sizes differ: train D={train_features.shape[1]}, "
                         f"query D={query_features.shape[1]}")
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"train_labels has shape {tuple(train_labels.shape)}; expected "
                         f"({train_features.shape[0]},), one label per train feature")
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1")
    if train_labels.numel() and (train_labels.min() < 0 or train_labels.max() >= num_classes):
        raise ValueError(f"train labels must lie in [0, {num_classes}); found "
                         f"[{int(train_labels.min())}, {int(train_labels.max())}]")
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    if exclude_self and query_features.shape[0] != train_features.shape[0]:
        raise ValueError("exclude_self needs the query set to be the train set (query i is train i); got "
                         f"{query_features.shape[0]} queries and {train_features.shape[0]} train features")
    available = train_features.shape[0] - (1 if exclude_self else 0)
    if available < 1:
        raise ValueError(f"no neighbours available: {train_features.shape[0]} train features"
                         + (" with exclude_self" if exclude_self else ""))


@torch.no_grad()
def weighted_knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                         num_classes: int, k: int = 20, temperature: float = 0.07, exclude_self: bool = False,
                         chunk_size: int = 1024, similarity_budget: int = SIMILARITY_BUDGET) -> torch.Tensor:
    """(M, num_classes) class scores of each query from its k nearest train features.

    Args:
        train_features: (N, D) bank features (any scale: each similarity is divided by the bank
            row's norm, so the bank is never copied normalized).
        train_labels: (N,) long class indices in [0, num_classes).
        query_features: (M, D) features to classify (L2-normalized here).
        num_classes: C.
        k: neighbours per query; clamped to the number available (N, or N - 1 with exclude_self).
        temperature: T in the weights exp(cos_sim / T).
        exclude_self: query i is train i (leave-one-out on the bank): never pick index i for query i.
            Identical features at other indices still count.
        chunk_size: at most this many queries per similarity block.
        similarity_budget: at most this many similarities (float32) per block: a block has
            min(chunk_size, similarity_budget // N) queries, so its memory stays bounded
            (64 MiB by default) however large the bank is.

    Returns:
        (M, C) float32 scores on the bank's device: the weights exp(s / T) of the neighbours summed
        per class, divided by their total per query (so each row sums to 1; the ranking equals the
        unnormalized vote of Wu et al./DINO, and small temperatures cannot overflow).
    """
    _check_inputs(train_features, train_labels, query_features, num_classes, k, temperature, exclude_self)
    device = train_features.device
    train = train_features.float()                                          # (N, D): no copy when float32
    train_norms = train.norm(dim=1).clamp_min(1e-12)                        # (N,): the bank is not copied
    queries = F.normalize(query_features.to(device).float(), dim=1)         # (M, D)
    labels = train_labels.to(device).long()                                 # (N,)
    neighbours = min(k, train.shape[0] - (1 if exclude_self else 0))
    scores = torch.zeros(queries.shape[0], num_classes, device=device)
    block_rows = max(1, min(chunk_size, similarity_budget // max(1, train.shape[0])))
    for start in range(0, queries.shape[0], block_rows):
        block = queries[start:start + block_rows]                           # (c, D)
        similarity = (block @ train.T).div_(train_norms)                    # (c, N) cosine similarities
        if exclude_self:
            rows = torch.arange(block.shape[0], device=device)
            similarity[rows, start + rows] = float("-inf")
        top_similarity, top_index = similarity.topk(neighbours, dim=1)      # (c, k)
        weights = torch.softmax(top_similarity / temperature, dim=1)        # exp(s/T) / sum, (c, k)
        scores[start:start + block.shape[0]].scatter_add_(1, labels[top_index], weights)
    return scores


@torch.no_grad()
def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                 query_labels: torch.Tensor, num_classes: int, k: int = 20, temperature: float = 0.07,
                 exclude_self: bool = False, per_query: bool = False) -> dict:
    """Weighted-kNN top-1 and top-5 accuracy (percent) of the queries.

    Shapes as in `weighted_knn_predict`, plus query_labels (M,). Returns
    {"top1": float, "top5": float}; with fewer than 5 classes "top5" is top-`num_classes`
    (always 100). Ties between class scores are broken by `torch.topk`. With `per_query`, also
    "top1_correct": M bools in query order, for paired comparisons of two backbones on the
    same queries.
    """
    if query_labels.shape != (query_features.shape[0],):
        raise ValueError(f"query_labels has shape {tuple(query_labels.shape)}; expected "
                         f"({query_features.shape[0]},), one label per query")
    if query_features.shape[0] == 0:
        raise ValueError("knn_accuracy needs at least one query")
    scores = weighted_knn_predict(train_features, train_labels, query_features, num_classes, k=k,
                                  temperature=temperature, exclude_self=exclude_self)
    targets = query_labels.to(scores.device).long().unsqueeze(1)              # (M, 1)
    ranked = scores.topk(min(5, num_classes), dim=1).indices                  # (M, 5)
    correct = ranked == targets                                               # (M, 5)
    result = {
        "top1": correct[:, 0].float().mean().item() * 100.0,
        "top5": correct.any(dim=1).float().mean().item() * 100.0,
    }
    if per_query:
        result["top1_correct"] = correct[:, 0].tolist()
    return result
