"""Bootstrap / self-distillation losses: BYOL, SimSiam, DINO (mean or Sinkhorn-Knopp centering).

Each DINO loss is its targets (`dino_targets`, `dino_sinkhorn_targets`) put into
`distillation_cross_entropy`; a method that also logs the targets computes them once.

The teacher side (momentum encoder or stop-gradient branch) never receives gradients here.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from selfsup.methods import distributed
from selfsup.methods.losses.clustering import sinkhorn_knopp


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
    targets = dino_targets(teacher_logits, center, teacher_temperature, num_teacher_views)
    return distillation_cross_entropy(student_logits, targets, student_temperature)


def dino_targets(teacher_logits: torch.Tensor | Sequence[torch.Tensor], center: torch.Tensor,
                 teacher_temperature: float = 0.04, num_teacher_views: int = 2) -> list[torch.Tensor]:
    """DINO's teacher targets, one (B, K) row-stochastic tensor per teacher view:
    ``softmax((g_t - c) / tau_t)`` (centering and sharpening, Caron et al. 2021, Eq. 4); the
    arguments as in `dino_loss`. Computed without gradient."""
    with torch.no_grad():
        return [F.softmax((t.detach() - center) / teacher_temperature, dim=-1)
                for t in _views(teacher_logits, num_teacher_views=num_teacher_views)]


def dino_sinkhorn_loss(
    student_logits: torch.Tensor | Sequence[torch.Tensor],
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.07,
    num_teacher_views: int = 2,
    iterations: int = 3,
) -> torch.Tensor:
    """DINO self-distillation with Sinkhorn-Knopp centering of the teacher (DINOv2).

    Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", TMLR 2024,
    Sec. 4 ("Sinkhorn-Knopp centering", after SwAV, Caron et al. 2020, Sec. 3.1): the teacher's
    softmax-with-running-center is replaced by 3 Sinkhorn-Knopp iterations over the teacher
    outputs of every global view of the (global) batch, with the teacher temperature as the
    entropy regularization. Each target row still sums to 1, and every output dimension gets an
    equal share of the batch, so no dimension can dominate the targets (what the running center
    only ensures over time); no running center is kept. Like the softmax, it does not sharpen:
    teacher logits that barely differ between images give near-uniform targets.

    Args:
        student_logits: V_s views of (B, K) student head outputs (a list or one (V_s * B, K)
            tensor), the first ``num_teacher_views`` being the teacher's global crops.
        teacher_logits: T views of (B, K) teacher outputs (a list or one (T * B, K) tensor);
            detached here.
        student_temperature: tau_s (0.1).
        teacher_temperature: tau_t, the Sinkhorn entropy regularization (0.07 after DINOv2's
            warm-up from 0.04).
        num_teacher_views: T, used to split a stacked ``teacher_logits``.
        iterations: Sinkhorn-Knopp iterations (3).

    Returns the scalar mean over the T * (V_s - 1) pairs (t, s), t != s, of
    ``mean_b sum_k -Q_t[b, k] * log_softmax(g_s / tau_s)[b, k]`` with
    ``Q = sinkhorn_knopp(cat(g_1, ..., g_T), epsilon=tau_t)`` split back per view.
    """
    targets = dino_sinkhorn_targets(teacher_logits, teacher_temperature, num_teacher_views, iterations)
    return distillation_cross_entropy(student_logits, targets, student_temperature)


def dino_sinkhorn_targets(teacher_logits: torch.Tensor | Sequence[torch.Tensor], teacher_temperature: float = 0.07,
                          num_teacher_views: int = 2, iterations: int = 3) -> list[torch.Tensor]:
    """DINOv2's teacher targets, one (B, K) tensor per teacher view: the rows of
    ``sinkhorn_knopp(cat(g_1, ..., g_T), epsilon=tau_t)`` split back per view (each row sums to 1,
    each output dimension gets an equal share of the global batch); the arguments as in
    `dino_sinkhorn_loss`. Computed without gradient."""
    teacher_views = _views(teacher_logits, num_teacher_views=num_teacher_views)
    codes = sinkhorn_knopp(torch.cat([t.detach() for t in teacher_views]), epsilon=teacher_temperature,
                           iterations=iterations)
    return list(codes.split(teacher_views[0].shape[0]))


def _views(logits: torch.Tensor | Sequence[torch.Tensor], *, num_teacher_views: int | None = None,
           batch: int | None = None) -> list[torch.Tensor]:
    """A list of (B, K) views: a list as given, or a stacked tensor cut into `num_teacher_views`
    equal chunks or into rows of `batch`."""
    if not isinstance(logits, torch.Tensor):
        return list(logits)
    if num_teacher_views is not None:
        return list(logits.chunk(num_teacher_views))
    return list(logits.split(batch))


def distillation_cross_entropy(student_logits: torch.Tensor | Sequence[torch.Tensor],
                               targets: Sequence[torch.Tensor], student_temperature: float = 0.1) -> torch.Tensor:
    """The cross-entropy of DINO's student against given teacher targets (`dino_targets` or
    `dino_sinkhorn_targets`, T tensors of (B, K)): the mean over pairs (t, s), t != s, of
    ``mean_b sum_k -targets[t] * log_softmax(g_s / tau_s)`` (a student view with a teacher view's
    index is the same crop, so it is skipped, as in the official code). `student_logits`: V_s
    views of (B, K), a list or one (V_s * B, K) tensor."""
    student_views = _views(student_logits, batch=targets[0].shape[0])
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
