"""Optimizers for large-batch self-supervised pretraining, their parameter groups and builder.

- `LARS`: You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks"
  (arXiv:1708.03888), as used by SimCLR, BYOL and Barlow Twins.
- `LAMB`: You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76
  minutes" (ICLR 2020), Algorithm 2.
- `parameter_groups`: biases and normalization parameters get no weight decay and no
  layer-wise adaptation (SimCLR/BYOL practice).
- `build_optimizer`: the registry `OPTIMIZERS` turned into one call, over a model's parameters or
  over those of one of its optimizer steps.
- `resolved_optimizer_steps`: a method's `optimizer_steps()` (`methods.protocol`), `[]` read as
  the one default step over every trainable parameter, checked to split the trainable parameters.

The trainer overwrites `group["lr"]` every step (with the base learning rate for the groups marked
`fixed_lr`, with the schedule's value for the others) and `group["weight_decay"]` for the groups whose
`group["apply_weight_decay"]` is True, so schedules live outside the optimizers.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from selfsup.methods.protocol import OptimizerStep

__all__ = ["DEFAULT_STEP", "LAMB", "LARS", "OPTIMIZERS", "build_optimizer", "parameter_groups",
           "resolved_optimizer_steps", "scale_learning_rate"]

DEFAULT_STEP = "model"  # the name of the one optimizer of a method that declares no steps


def _trust_ratio(numerator: torch.Tensor, denominator: torch.Tensor, *norms: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, or 1 where any of `norms` is 0 (a 0-dim tensor, no host sync)."""
    ratio = numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)
    all_positive = torch.stack([norm > 0 for norm in norms]).all()
    return torch.where(all_positive, ratio, torch.ones_like(ratio))


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (LARS, You et al. 2017, Algorithm 1).

    For each parameter `w` with gradient `g` (any shape), in a group that is not `lars_exclude`:

        local_lr = eta * ||w|| / (||g|| + weight_decay * ||w||)   (1 when ||w|| or ||g|| is 0)
        update   = local_lr * (g + weight_decay * w)

    In a `lars_exclude` group (biases, normalization) `update = g`: no weight decay and no
    adaptation. Then, as in torch.optim.SGD:

        buffer = momentum * buffer + update          (buffer = update at the first step)
        w     -= lr * (update + momentum * buffer if nesterov else buffer)

    The denominator is the paper's `||g|| + weight_decay * ||w||`; the SimCLR/BYOL TensorFlow
    code uses `||g + weight_decay * w||` instead (never larger, equal when g is parallel to w).

    Per-group options: lr, momentum (0.9), weight_decay (0), eta (0.001), nesterov (False),
    lars_exclude (False).
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, nesterov: bool = False, lars_exclude: bool = False):
        if lr < 0:
            raise ValueError(f"LARS: lr={lr} must be >= 0")
        if momentum < 0:
            raise ValueError(f"LARS: momentum={momentum} must be >= 0")
        if weight_decay < 0:
            raise ValueError(f"LARS: weight_decay={weight_decay} must be >= 0")
        if eta <= 0:
            raise ValueError(f"LARS: eta={eta} must be > 0")
        if nesterov and momentum <= 0:
            raise ValueError("LARS: nesterov momentum needs momentum > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                        nesterov=nesterov, lars_exclude=lars_exclude)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            weight_decay, momentum = group["weight_decay"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                update = param.grad
                if not group["lars_exclude"]:
                    param_norm = torch.linalg.vector_norm(param)
                    grad_norm = torch.linalg.vector_norm(update)
                    ratio = _trust_ratio(group["eta"] * param_norm, grad_norm + weight_decay * param_norm,
                                         param_norm, grad_norm)
                    update = update.add(param, alpha=weight_decay).mul_(ratio)
                if momentum > 0:
                    state = self.state[param]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = update.detach().clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(update)
                    buffer = state["momentum_buffer"]
                    update = update.add(buffer, alpha=momentum) if group["nesterov"] else buffer
                param.add_(update, alpha=-group["lr"])
        return loss


class LAMB(torch.optim.Optimizer):
    """Adam moments with a layer-wise trust ratio (LAMB, You et al. 2020, Algorithm 2).

    For each parameter `w` with gradient `g` at step t (1-based):

        m = beta1 * m + (1 - beta1) * g          v = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t)               v_hat = v / (1 - beta2**t)
        r = m_hat / (sqrt(v_hat) + eps) + weight_decay * w
        w -= lr * ||w|| / ||r|| * r              (ratio 1 when ||w|| or ||r|| is 0)

    In an `exclude_from_adaptation` group the weight decay and the ratio are dropped:
    `w -= lr * m_hat / (sqrt(v_hat) + eps)` (plain Adam). The paper's scaling function phi is the
    identity here (no clipping of ||w||).

    Per-group options: lr, betas ((0.9, 0.999)), eps (1e-6), weight_decay (0),
    exclude_from_adaptation (False).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, exclude_from_adaptation: bool = False):
        if lr < 0:
            raise ValueError(f"LAMB: lr={lr} must be >= 0")
        if not all(0.0 <= beta < 1.0 for beta in betas) or len(betas) != 2:
            raise ValueError(f"LAMB: betas={tuple(betas)} must be two values in [0, 1)")
        if eps <= 0:
            raise ValueError(f"LAMB: eps={eps} must be > 0")
        if weight_decay < 0:
            raise ValueError(f"LAMB: weight_decay={weight_decay} must be >= 0")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        exclude_from_adaptation=exclude_from_adaptation)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denominator = (exp_avg_sq / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
                update = (exp_avg / (1 - beta1 ** step)).div_(denominator)
                if not group["exclude_from_adaptation"]:
                    update.add_(param, alpha=group["weight_decay"])
                    param_norm = torch.linalg.vector_norm(param)
                    update_norm = torch.linalg.vector_norm(update)
                    update.mul_(_trust_ratio(param_norm, update_norm, param_norm, update_norm))
                param.add_(update, alpha=-group["lr"])
        return loss


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool = True,
                     fixed_lr_parameters: Iterable[nn.Parameter] = (),
                     parameters: Iterable[nn.Parameter] | None = None) -> list[dict]:
    """Split the trainable parameters of `model` into a "decay" and a "no_decay" group.

    `parameters` (some of the model's own, e.g. one optimizer step's) restricts the groups to
    those; by default every parameter of the model is grouped.

    With `exclude_bias_and_norm`, parameters with ndim <= 1 (biases; BatchNorm, LayerNorm and
    GroupNorm weights and biases; also 1-d tokens/scales) go to "no_decay": weight_decay 0,
    `lars_exclude=True`, `exclude_from_adaptation=True`, `apply_weight_decay=False`. The others
    go to "decay": the given weight_decay, no exclusion, `apply_weight_decay=True` (the trainer
    applies its weight-decay schedule to this group). Without `exclude_bias_and_norm` every
    parameter is in "decay". Parameters with requires_grad False are skipped; empty groups are
    left out. Shared parameters appear once.

    `fixed_lr_parameters` (e.g. SimSiam's predictor, which the paper trains at a constant learning
    rate) go to groups of their own, "decay_fixed_lr" / "no_decay_fixed_lr", marked
    `fixed_lr=True`: the trainer keeps their learning rate at the base value instead of following
    the schedule. Every other group has `fixed_lr=False`.
    """
    fixed = {id(param) for param in fixed_lr_parameters}
    owned = {id(param) for param in model.parameters()}
    if not fixed <= owned:
        raise ValueError(f"fixed_lr_parameters of {type(model).__name__}: {len(fixed - owned)} parameter(s) "
                         "are not the model's own")
    grouped = list(model.parameters() if parameters is None else parameters)
    if not {id(param) for param in grouped} <= owned:
        raise ValueError(f"parameters to group: some are not {type(model).__name__}'s own")
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {(d, f): [] for d in (True, False) for f in (False, True)}
    seen: set[int] = set()
    for param in grouped:
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        decays = not (exclude_bias_and_norm and param.ndim <= 1)
        buckets[(decays, id(param) in fixed)].append(param)
    if not seen:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (all requires_grad=False)")
    groups = []
    for (decays, fixed_lr), params in buckets.items():
        name = ("decay" if decays else "no_decay") + ("_fixed_lr" if fixed_lr else "")
        groups.append({"name": name, "params": params, "weight_decay": weight_decay if decays else 0.0,
                       "apply_weight_decay": decays, "lars_exclude": not decays,
                       "exclude_from_adaptation": not decays, "fixed_lr": fixed_lr})
    return [group for group in groups if group["params"]]


def _build_lars(groups, lr, weight_decay, momentum, betas):
    return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _build_sgd(groups, lr, weight_decay, momentum, betas):
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _build_adamw(groups, lr, weight_decay, momentum, betas):
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def _build_lamb(groups, lr, weight_decay, momentum, betas):
    return LAMB(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


# name -> builder(param_groups, lr, weight_decay, momentum, betas) -> optimizer
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "lars": _build_lars,
    "sgd": _build_sgd,
    "adamw": _build_adamw,
    "lamb": _build_lamb,
}


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.9,
                    betas: tuple[float, float] = (0.9, 0.999),
                    exclude_bias_and_norm: bool = True,
                    fixed_lr_parameters: Iterable[nn.Parameter] = (),
                    parameters: Iterable[nn.Parameter] | None = None) -> torch.optim.Optimizer:
    """The optimizer `name` ("lars", "sgd", "adamw", "lamb") over `parameter_groups(model, ...)`
    (over `parameters` only, when given: one optimizer step's).

    `momentum` is used by lars/sgd, `betas` by adamw/lamb. Every group carries "name" and
    "apply_weight_decay". Unknown names raise ValueError listing the known ones.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {', '.join(sorted(OPTIMIZERS))}")
    groups = parameter_groups(model, weight_decay, exclude_bias_and_norm, fixed_lr_parameters, parameters)
    return OPTIMIZERS[name](groups, lr, weight_decay, momentum, betas)


def resolved_optimizer_steps(model: nn.Module) -> list[OptimizerStep]:
    """`model.optimizer_steps()`, or for `[]` the one step `DEFAULT_STEP` over every trainable
    parameter minimising "loss". Declared steps must have distinct names and split the trainable
    parameters: each in exactly one step (else ValueError naming the method and what is wrong)."""
    declared = list(model.optimizer_steps())
    trainable = [param for param in model.parameters() if param.requires_grad]
    if not declared:
        return [OptimizerStep(DEFAULT_STEP, trainable, "loss")]
    method = type(model).__name__
    names = [step.name for step in declared]
    if len(set(names)) != len(names) or DEFAULT_STEP in names:
        raise ValueError(f"{method}.optimizer_steps(): names {names} must be distinct and not {DEFAULT_STEP!r}")
    counts: dict[int, int] = {}
    for step in declared:
        for param in step.parameters:
            counts[id(param)] = counts.get(id(param), 0) + 1
    left_out = sum(1 for param in trainable if id(param) not in counts)
    twice = sum(1 for count in counts.values() if count > 1)
    foreign = len(set(counts) - {id(param) for param in trainable})
    if left_out or twice or foreign:
        raise ValueError(f"{method}.optimizer_steps() must split its trainable parameters: {left_out} in no step, "
                         f"{twice} in more than one, {foreign} not trainable parameters of the method")
    return declared


def scale_learning_rate(base_lr: float, global_batch_size: int, reference_batch_size: int = 256,
                        rule: str = "linear") -> float:
    """The learning rate for `global_batch_size` given `base_lr` for `reference_batch_size`.

    "linear": base_lr * B / 256 (Goyal et al. 2017; SimCLR, MoCo), "sqrt": base_lr * sqrt(B / 256)
    (SimCLR's LARS variant, LAMB), "none": base_lr.
    """
    if global_batch_size <= 0 or reference_batch_size <= 0:
        raise ValueError(f"batch sizes must be positive: global_batch_size={global_batch_size}, "
                         f"reference_batch_size={reference_batch_size}")
    if rule == "linear":
        return base_lr * global_batch_size / reference_batch_size
    if rule == "sqrt":
        return base_lr * math.sqrt(global_batch_size / reference_batch_size)
    if rule == "none":
        return float(base_lr)
    raise ValueError(f"unknown learning-rate scaling rule {rule!r}; known rules: linear, sqrt, none")
