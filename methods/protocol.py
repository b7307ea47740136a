"""The one protocol every registered method satisfies: what the trainer, evaluation and export call.

A method is an ``nn.Module`` in one file; it defines each of these itself (no base class, no
mixin), even where there is nothing to do, so that reading the file tells everything the trainer
will call on it:

* ``backbone``: the network that evaluation (kNN, linear probe) and export use.
* ``forward(batch) -> dict``: the batch of its view recipe in, ``"loss"`` (a 0-dim tensor with
  gradient) and the detached scalar terms worth logging out.
* ``on_step_end(step, total_steps)``: after each optimizer step (``step`` counts from 0): EMA
  teachers, schedules held in buffers, queues, k-means; a no-op where nothing happens.
* ``teacher_backbone()``: the momentum teacher / target / key encoder backbone (the same
  architecture and ``state_dict`` keys as ``backbone``), or None for a method that keeps none.
* ``fixed_lr_parameters()``: parameters the trainer keeps at the base learning rate while the
  others follow the schedule (SimSiam's predictor); ``[]`` where none.
* ``last_layer_parameters()``: parameters the trainer keeps frozen (no update at all) for the
  first ``trainer.freeze_last_layer_epochs`` epochs (DINO's last layer, SwAV's prototypes);
  ``[]`` where none.
* ``optimizer_steps()``: the optimizers the method is trained with, in update order, each an
  ``OptimizerStep``: its name, the parameters it updates and the output key of the loss it
  minimises. ``[]``, what every non-adversarial method returns, means one optimizer over every
  trainable parameter minimising ``"loss"``, the method called as ``forward(batch)``. An
  adversarial method returns its discriminator and generator steps (``"discriminator_loss"``,
  ``"loss"``): their parameters split its trainable ones (each in exactly one step), and the trainer
  calls ``forward(batch, step=NAME)`` once per step, in that order, after the steps before it have
  updated their parameters, and backpropagates only that step's loss into only that step's
  optimizer. A step's forward computes what its loss needs and no more (the discriminator's sees
  the generator's outputs detached), so that under DDP each forward's graph reaches only the
  parameters its backward will give gradients. Plain ``forward(batch)`` is the generator's step.

Backbones carry ``kind``: ``"resnet"``, ``"vit"`` or ``"conv"`` (the dvae's encoder: a feature map
and an output stride, as a ResNet) (``BackboneKind``), for the methods that need one of them (MAE,
SimMIM, BEiT, dvae) or treat them differently (MoCo v3, the dense pretexts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn

BackboneKind = Literal["resnet", "vit", "conv"]


@dataclass(frozen=True)
class OptimizerStep:
    """One optimizer of a method trained with several (generator and discriminator).

    ``name`` is what the trainer passes as ``forward(batch, step=name)`` and what the optimizer's
    state is kept under in checkpoints; ``loss`` the key of the forward's outputs it minimises;
    ``lr_multiplier`` scales the configured (scheduled) learning rate for this optimizer only.
    """

    name: str
    parameters: list[nn.Parameter] = field(repr=False)
    loss: str
    lr_multiplier: float = 1.0


@runtime_checkable
class Method(Protocol):
    backbone: nn.Module

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def on_step_end(self, step: int, total_steps: int) -> None: ...

    def teacher_backbone(self) -> nn.Module | None: ...

    def fixed_lr_parameters(self) -> list[nn.Parameter]: ...

    def last_layer_parameters(self) -> list[nn.Parameter]: ...

    def optimizer_steps(self) -> list[OptimizerStep]: ...

