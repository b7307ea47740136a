"""DINO: self-distillation with no labels (Caron et al., "Emerging Properties in Self-Supervised
Vision Transformers", ICCV 2021, arXiv:2104.14294).

A student (backbone + DINO head) is trained to match the output distribution of a teacher, an
exponential moving average of the student (momentum 0.996 -> 1, cosine per step), over K = 65536
output dimensions. The teacher sees the two global crops, the student every crop (2 global +
the multi-crop local ones); each student crop predicts each teacher crop except its own (Eq. 1).
Collapse is avoided by *centering* the teacher's logits with a running mean c (momentum 0.9,
Eq. 4) and *sharpening* them with a low temperature tau_t (0.04, warmed up linearly from
``warmup_teacher_temperature`` over the first ``teacher_temperature_warmup_fraction`` of
training); the student uses tau_s = 0.1. ``centering="sinkhorn"`` replaces the running mean by
DINOv2's Sinkhorn-Knopp centering (Oquab et al. 2024, Sec. 4): the teacher's targets are 3
Sinkhorn-Knopp iterations over the batch with tau_t as the entropy regularization, so every
output dimension gets an equal share of the batch at once (no output can dominate, as the running
center only ensures over time). It does not sharpen: logits that barely differ between images
still give near-uniform targets. The center buffer then stays 0. The head's last layer is
``last_layer_parameters()``: the trainer keeps it frozen for its first
``trainer.freeze_last_layer_epochs`` (the paper's first epoch).

Batch: `view_0`, `view_1` (global crops), then `view_2`, ... (local crops, any smaller size).
Output: `loss`, `dino`, `teacher_temperature`, `momentum`, `teacher_entropy` (mean entropy of the
teacher's targets: log K means uniform, 0 means one-hot).
State: `teacher_encoder` (the teacher's backbone), `teacher_head`, `center` (1, K),
`teacher_temperature`, `momentum`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.heads import DINOHead
from selfsup.methods.losses import dino_sinkhorn_targets, dino_targets, dino_update_center, distillation_cross_entropy
from selfsup.methods.momentum import cosine_momentum, ema_update_, frozen_copy
from selfsup.methods.multicrop import batch_views, same_size_runs
from selfsup.methods.protocol import OptimizerStep


CENTERING = ("mean", "sinkhorn")


@dataclass
class DINOOptions:
    name: str = "dino"
    output_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = True
    head_batch_norm: bool = False  # True for ResNet backbones in the official code
    student_temperature: float = 0.1
    teacher_temperature: float = 0.04  # after the warm-up
    warmup_teacher_temperature: float = 0.04
    teacher_temperature_warmup_fraction: float = 0.3  # of all steps (30 of 100 epochs)
    center_momentum: float = 0.9
    centering: str = "mean"  # "mean": DINO's running center; "sinkhorn": DINOv2's Sinkhorn-Knopp
    momentum: float = 0.996
    final_momentum: float = 1.0
    num_global_views: int = 2


class DINO(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, *, output_dim: int, hidden_dim: int,
                 bottleneck_dim: int, head_layers: int, norm_last_layer: bool,
                 head_batch_norm: bool, student_temperature: float, teacher_temperature: float,
                 warmup_teacher_temperature: float, teacher_temperature_warmup_fraction: float,
                 center_momentum: float, centering: str, momentum: float, final_momentum: float,
                 num_global_views: int):
        super().__init__()
        if centering not in CENTERING:
            raise ValueError(f"dino: method.centering={centering!r} is not one of {', '.join(CENTERING)}")
        self.centering = centering
        self.backbone = backbone
        self.head = DINOHead(feature_dim, output_dim, hidden_dim, bottleneck_dim, head_layers,
                             norm_last_layer, head_batch_norm)
        self.teacher_encoder = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.student_temperature = student_temperature
        self.temperature_schedule = (warmup_teacher_temperature, teacher_temperature,
                                     teacher_temperature_warmup_fraction)
        self.center_momentum = center_momentum
        self.momentum_schedule = (momentum, final_momentum)
        self.num_global_views = num_global_views
        self.register_buffer("center", torch.zeros(1, output_dim))
        self.register_buffer("teacher_temperature",
                             torch.tensor(float(self._teacher_temperature(0, 1))))
        self.register_buffer("momentum", torch.tensor(float(momentum)))

    def _teacher_temperature(self, step: int, total_steps: int) -> float:
        start, end, fraction = self.temperature_schedule
        warmup = fraction * total_steps
        if step >= warmup:
            return end
        return start + (end - start) * step / warmup

    def _student(self, views: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.head(self.backbone(run)) for run in same_size_runs(views)])

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = batch_views(batch)
        global_views = views[: self.num_global_views]
        student = self._student(views)  # (V * B, K), views in batch order
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_encoder(torch.cat(global_views)))  # (G * B, K)
        temperature = float(self.teacher_temperature)
        if self.centering == "sinkhorn":
            targets = dino_sinkhorn_targets(teacher, temperature, num_teacher_views=len(global_views))
        else:
            targets = dino_targets(teacher, self.center, temperature, num_teacher_views=len(global_views))
        loss = distillation_cross_entropy(student, targets, self.student_temperature)
        with torch.no_grad():
            every_target = torch.cat(targets)
            entropy = -(every_target * torch.log(every_target.clamp_min(1e-12))).sum(dim=-1).mean()
            if self.training and self.centering == "mean":
                self.center.copy_(dino_update_center(self.center, teacher, self.center_momentum))
        return {"loss": loss, "dino": loss.detach(), "teacher_entropy": entropy,
                "teacher_temperature": self.teacher_temperature.clone(),
                "momentum": self.momentum.clone()}

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        momentum = float(self.momentum)
        ema_update_(self.teacher_encoder, self.backbone, momentum)
        ema_update_(self.teacher_head, self.head, momentum)
        next_step = step + 1
        self.momentum.fill_(cosine_momentum(next_step, total_steps, *self.momentum_schedule))
        self.teacher_temperature.fill_(self._teacher_temperature(next_step, total_steps))

    def teacher_backbone(self) -> nn.Module:
        return self.teacher_encoder

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The head's weight-normalized last layer, frozen by the trainer at first (Caron et al. 2021)."""
        return list(self.head.last_layer.parameters())

    def optimizer_steps(self) -> list[OptimizerStep]:
        """One optimizer over every trainable parameter, minimising "loss"."""
        return []


def build_dino(options: DINOOptions, backbone: nn.Module, feature_dim: int) -> DINO:
    arguments = {key: value for key, value in dataclasses.asdict(options).items() if key != "name"}
    return DINO(backbone, feature_dim, **arguments)
