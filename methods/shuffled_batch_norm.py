"""MoCo's shuffling BN (He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual
Representation Learning", CVPR 2020, arXiv:1911.05722, Sec. 3.3; the official code's
``_batch_shuffle_ddp`` and ``_batch_unshuffle_ddp``), for MoCo v1 and v2's key encoder.

BatchNorm normalizes with the statistics of each rank's sub-batch. A query and its positive key
computed in the same sub-batch share those statistics, and the model can use that intra-batch
communication to tell which key is whose (a low loss without good features: "cheating"). Shuffling
BN gathers the key encoder's inputs from every rank, permutes the global batch with a permutation
every rank draws alike (a CPU generator seeded by the caller, the step), lets each rank embed one
slice of it, then gathers the embeddings and undoes the permutation: each rank gets back the keys
of its own samples in their order, computed with the statistics of another, random sub-batch than
their queries'.

In one process there is one rank and nothing to shuffle across: ``shuffled_forward`` is then the
encoder itself (permuting within the one batch leaves its statistics as they are), and the keys'
statistics are those of the queries' batch, as on one GPU. SyncBatchNorm is not an alternative:
it takes the statistics of the whole global batch, which holds every query's positive key as
before, so the leak stays (and with ``model.sync_batchnorm`` on, shuffling changes nothing).

Shapes: images (B, ...) on every rank, the same B everywhere; the encoder maps (B, ...) to (B, D).
Everything here runs without gradients (MoCo's keys take none).
"""

from __future__ import annotations

from typing import Callable

import torch

from selfsup.methods import distributed


def shuffle_permutation(count: int, seed: int) -> torch.Tensor:
    """(count,) int64, a permutation drawn from a CPU generator seeded with `seed` (same on every rank)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def shuffle_across_ranks(images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(this rank's slice (B, ...) of the shuffled global batch, the permutation (B * W,)).

    Row j of the shuffled global batch is sample permutation[j] of the gathered batch (ordered by
    rank); rank r takes rows r * B .. (r + 1) * B - 1.
    """
    batch, rank = images.shape[0], distributed.rank()
    everything = distributed.gather_no_grad(images)  # (B * W, ...)
    permutation = shuffle_permutation(everything.shape[0], seed).to(images.device)
    return everything[permutation[rank * batch:(rank + 1) * batch]], permutation


@torch.no_grad()
def unshuffle_across_ranks(outputs: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """This rank's own samples' outputs (B, ...), in their order, from every rank's outputs of its
    slice of the shuffled batch (`shuffle_across_ranks`)."""
    batch, rank = outputs.shape[0], distributed.rank()
    shuffled = distributed.gather_no_grad(outputs)  # row j: sample permutation[j]
    unshuffled = torch.empty_like(shuffled)
    unshuffled[permutation] = shuffled
    return unshuffled[rank * batch:(rank + 1) * batch]


@torch.no_grad()
def shuffled_forward(encoder: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     seed: int) -> torch.Tensor:
    """``encoder(images)`` with BatchNorm statistics from a random sub-batch of the global batch:
    shuffle across ranks, encode this rank's slice, unshuffle. The encoder itself in one process."""
    if distributed.world_size() == 1:
        return encoder(images)
    mine, permutation = shuffle_across_ranks(images, seed)
    return unshuffle_across_ranks(encoder(mine), permutation)
