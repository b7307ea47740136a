"""Tiny ``torch.distributed`` helpers used by the losses.

Every helper is a no-op (or returns the trivial answer) when ``torch.distributed`` is not
available or not initialized, so the losses run unchanged in a single process.

The one helper that matters for correctness is :func:`gather_with_grad`: it uses
``torch.distributed.nn.functional.all_gather``, whose backward pass sums the incoming
gradients over ranks and hands each rank the slice that belongs to its own input. With DDP's
gradient averaging this makes a loss computed on "local anchors vs. the global batch" produce
exactly the gradient of the single-process loss on the concatenated batch.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the default group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping gradients.

    Shapes: x (N, ...) on every rank (same N everywhere) -> (W * N, ...), ordered by rank.
    Gradients flowing into the result reach each rank's own ``x``.
    """
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # torch suggests a private replacement (_functional_collectives); the public API stays
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x), dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, without gradients (e.g. for queues)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks. Differentiable (the backward pass is also a sum over ranks).

    Returns ``x`` unchanged when not distributed.
    """
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x, op=dist.ReduceOp.SUM)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Average ``x`` over ranks (differentiable). Returns ``x`` unchanged when not distributed."""
    if world_size() == 1:
        return x
    return all_reduce_sum(x) / world_size()


@torch.no_grad()
def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``x`` over ranks (no gradient); ``x`` when not distributed."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


@torch.no_grad()
def broadcast_(x: torch.Tensor, source: int = 0) -> torch.Tensor:
    """In place: ``x`` on every rank becomes rank ``source``'s ``x`` (same shape and dtype on
    every rank); returns it. A no-op when not distributed. For results computed once, on one
    rank (k-means labels), or that must agree bit for bit (a re-initialized layer)."""
    if world_size() == 1:
        return x
    if x.is_contiguous():
        dist.broadcast(x, src=source)
        return x
    contiguous = x.contiguous()
    dist.broadcast(contiguous, src=source)
    return x.copy_(contiguous)
