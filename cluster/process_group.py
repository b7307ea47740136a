"""The DDP process group of a Ray Train worker group, joined by the training function itself.

torch's `env://` rendezvous, which Ray's TorchTrainer uses, starts its TCPStore listening on every
interface whatever MASTER_ADDR says. `OwnProcessGroup` keeps TorchTrainer's worker set-up but not
its process group, and `join_process_group`, called first in each worker, makes the group with
rank 0 listening on its node's Ray address only (127.0.0.1 on a local Ray).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from datetime import timedelta

import selfsup.cluster.local_ray  # noqa: F401  first: it sets Ray's environment before Ray is imported

import ray
import ray.train
import torch.distributed
from ray.train.backend import Backend
from ray.train.collective import broadcast_from_rank_zero
from ray.train.torch import TorchConfig

PROCESS_GROUP_TIMEOUT_SECONDS = 1800  # TorchConfig's default


class _WorkerSetupOnly(Backend):
    """Ray: TorchTrainer's worker set-up (all GPUs of a node visible to its workers, for NCCL's
    peer-to-peer paths) without its process group, which `join_process_group` makes instead."""

    share_cuda_visible_devices = True


class OwnProcessGroup(TorchConfig):
    """TorchConfig whose process group the training function joins itself (`join_process_group`)."""

    @property
    def backend_cls(self):
        return _WorkerSetupOnly


def join_process_group(backend: str, timeout_seconds: float) -> None:
    """Join the DDP process group of this Ray Train worker group (nothing to join for one worker).

    torch's `env://` rendezvous, which TorchTrainer uses, starts its TCPStore listening on every
    interface whatever MASTER_ADDR says. Here rank 0 opens the listening socket itself, on its
    node's Ray address only (127.0.0.1 on a local Ray), and hands it to the store. On loopback,
    gloo and NCCL are kept on the loopback interface too (unless GLOO_/NCCL_SOCKET_IFNAME are set).
    """
    context = ray.train.get_context()  # Ray
    rank, world_size = context.get_world_rank(), context.get_world_size()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(context.get_local_rank()),
                      LOCAL_WORLD_SIZE=str(context.get_local_world_size()), NODE_RANK=str(context.get_node_rank()))
    if world_size == 1:
        return
    listener, address = None, None
    if rank == 0:
        host = ray.util.get_node_ip_address()  # Ray: this node's address in the cluster
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        listener = socket.create_server((host, 0), family=family, backlog=max(world_size, 128))
        address = (host, listener.getsockname()[1])
    host, port = broadcast_from_rank_zero(address)  # Ray: every rank learns where rank 0 listens
    if ipaddress.ip_address(host).is_loopback and sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    if backend == "nccl":  # as TorchTrainer does: fail on a collective timeout instead of hanging
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    timeout = timedelta(seconds=timeout_seconds)
    store = torch.distributed.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout,
                                       master_listen_fd=None if listener is None else listener.detach())
    torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
