"""Who this process is in a distributed run, and the few collective helpers the loop needs.

The process group is set up by whoever launched us (Ray Train's TorchTrainer, torchrun, or a
test); a plain process with no group is rank 0 of 1. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_distributed
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_context() -> DistributedContext:
    """Read rank and world size from the initialized process group (or 0 of 1)."""
    initialized = torch_distributed.is_available() and torch_distributed.is_initialized()
    rank = torch_distributed.get_rank() if initialized else 0
    world_size = torch_distributed.get_world_size() if initialized else 1
    local_rank = int(os.environ.get("LOCAL_RANK", rank if world_size > 1 else 0))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return DistributedContext(rank, world_size, local_rank, local_world_size, device)


def wrap_model(model: torch.nn.Module, context: DistributedContext, *,
               find_unused_parameters: bool = False) -> torch.nn.Module:
    """DistributedDataParallel when there is more than one rank, the model itself otherwise.

    `find_unused_parameters`: for a model whose forwards each reach only some of its parameters
    (a method with several optimizer steps); DDP then finds them in each forward's graph.
    """
    if context.world_size == 1:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def mean_across_ranks(values: dict[str, float], context: DistributedContext) -> dict[str, float]:
    """Average scalar metrics over all ranks (for logging; one small all-reduce)."""
    if context.world_size == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64,
                          device=context.device if context.device.type == "cuda" else "cpu")
    torch_distributed.all_reduce(tensor)
    tensor /= context.world_size
    return dict(zip(keys, tensor.tolist()))


def barrier(context: DistributedContext) -> None:
    if context.world_size > 1:
        torch_distributed.barrier()
