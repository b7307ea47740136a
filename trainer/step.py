"""One optimizer step: micro-batches forward and backward, then clip, freeze and update.

Split in two so that the loop can decide between them (stop, skip or fail on a non-finite loss,
agreed across ranks). A method with several optimizers (generator and discriminator) runs both
halves once per optimizer, in its update order, each with its own loss key, the same
micro-batches, its own grad scaler and its own parameters to clip:

- `accumulate_gradients` runs `k` micro-batches, each loss scaled by 1/k, so the summed
  gradients are those of the mean loss over the k micro-batches: for a model without
  batch-statistics layers (BatchNorm) that is exactly the gradient of one batch k times larger.
  Under DDP the gradients are all-reduced only on the last micro-batch (`no_sync`).
- `apply_update` unscales (fp16), zeroes the gradients of frozen parameters (e.g. DINO's last
  layer during its first epochs), clips the global gradient norm and steps the optimizer.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterable

import torch
from torch.nn.parallel import DistributedDataParallel
from selfsup.errors import NonFiniteLossError


def autocast_for(precision: str, device: torch.device):
    """The autocast context of `trainer.precision`: auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32."""
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"trainer.precision={precision!r}; expected auto, bf16, fp16 or fp32")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("trainer.precision=fp16 needs a GPU; use bf16 or fp32 on the CPU")
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    enabled = precision in ("bf16", "fp16") or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def grad_scaler_for(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def accumulate_gradients(forward: Callable[[dict], dict], parallel_model: torch.nn.Module,
                         next_batch: Callable[[], dict], micro_batches: int, *, autocast_precision: str,
                         device: torch.device, scaler: torch.amp.GradScaler | None = None,
                         loss_key: str = "loss") -> dict[str, torch.Tensor]:
    """Forward and backward `micro_batches` batches from `next_batch()`; the mean of each scalar output.

    `forward` is the (possibly compiled) model call; `parallel_model` the DDP wrapper or the model
    (for `no_sync`); `loss_key` the output that is backpropagated. Returns detached 0-dim float32
    tensors: `loss_key` and every other scalar term. The caller zeroes gradients before
    (set_to_none) and checks the loss before `apply_update`.
    """
    totals: dict[str, torch.Tensor] = {}
    for index in range(micro_batches):
        last = index == micro_batches - 1
        batch = next_batch()
        synchronizing = (nullcontext() if last or not isinstance(parallel_model, DistributedDataParallel)
                         else parallel_model.no_sync())
        with synchronizing:
            with autocast_for(autocast_precision, device):
                outputs = forward(batch)
            loss = outputs[loss_key] / micro_batches
            (scaler.scale(loss) if scaler is not None else loss).backward()
        for key, value in outputs.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.detach().float().reshape(()) / micro_batches
                totals[key] = totals[key] + value if key in totals else value
    return totals


def apply_update(optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter], *,
                 grad_clip: float | None, frozen: Iterable[torch.nn.Parameter] = (),
                 scaler: torch.amp.GradScaler | None = None) -> torch.Tensor | None:
    """Zero frozen parameters' gradients, clip, step; returns the gradient norm before clipping
    (a 0-dim tensor) when clipping, else None."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    for parameter in frozen:
        parameter.grad = None
    norm = None
    if grad_clip:
        norm = torch.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return norm
