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

Backbones carry ``kind``: ``"resnet"``, ``"vit"`` or ``"conv"`` (the dvae's encoder: a feature map
and an output stride, as a ResNet) (``BackboneKind``), for the methods that need one of them (MAE,
SimMIM, BEiT, dvae) or treat them differently (MoCo v3, the dense pretexts).
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn

BackboneKind = Literal["resnet", "vit", "conv"]


@runtime_checkable
class Method(Protocol):
    backbone: nn.Module

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def on_step_end(self, step: int, total_steps: int) -> None: ...

    def teacher_backbone(self) -> nn.Module | None: ...

    def fixed_lr_parameters(self) -> list[nn.Parameter]: ...

    def last_layer_parameters(self) -> list[nn.Parameter]: ...

