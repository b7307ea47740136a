"""Bootstrap / self-distillation losses: BYOL, SimSiam, DINO.

The teacher side (momentum encoder or stop-gradient branch) never receives gradients here.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from methods import distributed


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Negative cosine similarity with a stop-gradient on the target.

    SimSiam: Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, Eq. 1.
    BYOL: Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, Eq. 2, writes the same
    objective as ``||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)``, i.e. ``2 + 2 * negative_cosine``:
    an affine change with the same minimiser and a 2x gradient scale.

    Args:
        p: (N, D) predictions of the online branch.
        z: (N, D) targets (target network / other branch); detached here.

    Returns the scalar ``mean_i -cos(p_i, z_i)`` in [-1, 1]. The methods symmetrize over views.
    """
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def dino_loss(
    student_logits: torch.Tensor | Sequence[torch.Tensor],
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    center: torch.Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
    num_teacher_views: int = 2,
) -> torch.Tensor:
    """DINO self-distillation cross-entropy.

    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021.

    Args:
        student_logits: V_s views of (B, K) student head outputs, as a list or stacked view
            after view into one (V_s * B, K) tensor. Views are in the teacher's order: the
            first ``num_teacher_views`` student views are the same global crops.
        teacher_logits: T views of (B, K) teacher outputs (the global crops, T = 2 in DINO), as
            a list or one (T * B, K) tensor. Detached here.
        center: (1, K) running center of the teacher logits (see ``dino_update_center``).
        student_temperature: tau_s (0.1).
        teacher_temperature: tau_t (0.04 after the warm-up from 0.04-0.07; the schedule is the
            method's job).
        num_teacher_views: T, used to split a stacked ``teacher_logits``.

    For every pair (t, s) with t != s:
    ``H(t, s) = mean_b sum_k -softmax((g_t - c) / tau_t)_bk * log_softmax(g_s / tau_s)_bk``.
    Returns the scalar mean of H over the T * (V_s - 1) pairs, as the official code does
    (a student view with the same index as a teacher view is the same crop, so it is skipped).
    """
    if isinstance(teacher_logits, torch.Tensor):
        teacher_views = list(teacher_logits.chunk(num_teacher_views))
    else:
        teacher_views = list(teacher_logits)
    batch = teacher_views[0].shape[0]
    if isinstance(student_logits, torch.Tensor):
        student_views = list(student_logits.split(batch))
    else:
        student_views = list(student_logits)
    targets = [
        F.softmax((t.detach() - center) / teacher_temperature, dim=-1) for t in teacher_views
    ]
    log_predictions = [F.log_softmax(s / student_temperature, dim=-1) for s in student_views]

    total = student_views[0].new_zeros(())
    num_pairs = 0
    for teacher_index, target in enumerate(targets):
        for student_index, log_prediction in enumerate(log_predictions):
            if student_index == teacher_index:
                continue
            total = total + (-target * log_prediction).sum(dim=-1).mean()
            num_pairs += 1
    return total / num_pairs


@torch.no_grad()
def dino_update_center(
    center: torch.Tensor,
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    momentum: float = 0.9,
) -> torch.Tensor:
    """EMA of the teacher's mean output, DINO's centering (Caron et al. 2021, Eq. 4).

    Args:
        center: (1, K) current center.
        teacher_logits: (T * B, K) teacher outputs of all views (or a list of (B, K)).
        momentum: m (0.9).

    Returns the new (1, K) center ``m * c + (1 - m) * mean over the global batch``; under DDP
    the batch mean is all-reduced over ranks (each rank holds the same number of samples).
    """
    if not isinstance(teacher_logits, torch.Tensor):
        teacher_logits = torch.cat(list(teacher_logits), dim=0)
    batch_center = teacher_logits.float().sum(dim=0, keepdim=True)
    count = teacher_logits.shape[0] * distributed.world_size()
    batch_center = distributed.all_reduce_sum(batch_center) / count
    return center * momentum + batch_center.to(center.dtype) * (1 - momentum)
