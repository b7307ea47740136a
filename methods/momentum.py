"""Momentum (EMA) teachers and ring-buffer queues, shared by the methods that keep them.

* ``frozen_copy(module)``: the teacher at step 0, a deep copy whose parameters take no gradient.
* ``ema_update_(teacher, student, momentum)``: ``theta_t <- m * theta_t + (1 - m) * theta_s`` over
  parameters (MoCo, He et al. 2020, Eq. 2; BYOL, Grill et al. 2020, Sec. 3.1). Buffers
  (BatchNorm running statistics) are the teacher's own: it runs in training mode on its batch.
* ``cosine_momentum(step, total_steps, base, final)``: BYOL's schedule
  ``m_k = final - (final - base) * (cos(pi k / K) + 1) / 2``, from ``base`` at k = 0 to
  ``final`` at k = K (BYOL Sec. 3.2; DINO; MoCo v3 with base 0.99).
* ``enqueue_(queue, pointer, keys)``: MoCo's ring-buffer queue of keys with a write pointer.

Everything a method keeps across steps lives in buffers or parameters, so it is in
``state_dict`` and a resumed run continues exactly. Under DDP the trainer's
DistributedDataParallel broadcasts rank 0's buffers before every forward, so every buffer here
must be the same on all ranks: queues enqueue the keys gathered from all ranks.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with ``requires_grad=False`` on every parameter."""
    teacher = copy.deepcopy(module)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: every teacher parameter becomes ``m * teacher + (1 - m) * student``.

    The two modules must have the same parameter layout (the teacher is a copy of the student).
    """
    teacher_parameters = list(teacher.parameters())
    student_parameters = [p.detach() for p in student.parameters()]
    if len(teacher_parameters) != len(student_parameters):
        raise ValueError("teacher and student have different parameter layouts")
    for teacher_parameter, student_parameter in zip(teacher_parameters, student_parameters):
        teacher_parameter.mul_(momentum).add_(student_parameter, alpha=1.0 - momentum)


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's cosine momentum schedule: ``base`` at step 0, ``final`` at ``total_steps``."""
    if total_steps <= 0:
        return final
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def enqueue_(queue: torch.Tensor, pointer: torch.Tensor, keys: torch.Tensor) -> None:
    """Write ``keys`` (N, D) into the ring buffer ``queue`` (K, D) at ``pointer`` and advance it.

    Rows ``pointer .. pointer + N - 1`` (mod K) are replaced, the oldest entries first (MoCo,
    Algorithm 1: enqueue the current keys, dequeue the earliest). ``pointer`` is a long scalar
    buffer. N > K keeps only the last K keys.
    """
    size = queue.shape[0]
    if keys.shape[0] > size:
        keys = keys[-size:]
    count = keys.shape[0]
    start = int(pointer)
    rows = (torch.arange(count, device=queue.device) + start) % size
    queue[rows] = keys.to(queue.dtype)
    pointer.fill_((start + count) % size)
