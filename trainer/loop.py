"""The training function: plain PyTorch, the same in a lone process, a Ray Train worker or a Tune trial.

`train(config, output_dir)` reads the converted dataset with the DALI loader, builds the method
from the registry, and runs the loop: per-step lr / weight-decay schedules, bf16 autocast on
GPU, DDP when the world is larger than one, TensorBoard and progress, and checkpoints every
`trainer.checkpoint_every` steps and at the end. Rank 0 writes `output_dir/checkpoints/` and
`output_dir/tensorboard/`. A run started again on the same output directory continues from its
latest checkpoint. `report` (optional) receives metrics every `log_every` steps on every rank;
the cluster layer passes Ray's reporting there.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from methods.backbones import build_backbone
from methods.registry import method_entry
from pipeline.dataset import load_dataset_info
from pipeline.loader import build_train_loader, default_threads
from pipeline.recipes import build_recipe
from trainer.checkpoint import (
    CheckpointError, check_compatible, latest_checkpoint, load_checkpoint, restore_rng_state,
    rng_state, save_checkpoint,
)
from trainer.config import Config, config_to_dict
from trainer.distributed import DistributedContext, barrier, current_context, mean_across_ranks, wrap_model
from trainer.optimizers import build_optimizer, scale_learning_rate
from trainer.progress import RunLogger
from trainer.schedules import cosine_schedule

CHECKPOINT_FORMAT = 1
# Keys that must agree between a checkpoint and the run that continues it.
RESUME_KEYS = ("method.name", "model.backbone", "model.small_input", "optim.name")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the loss terms."""


def backbone_options(config: Config) -> dict:
    """Constructor arguments for the configured backbone."""
    if config.model.backbone.startswith("resnet"):
        return {"small_input": config.model.small_input}
    return {"img_size": config.data.image_size}


def build_model(config: Config) -> torch.nn.Module:
    """The method module (with its `backbone`) described by a config."""
    backbone, feature_dim = build_backbone(config.model.backbone, **backbone_options(config))
    return method_entry(config.method.name).build(config.method, backbone, feature_dim)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast(config: Config, device: torch.device):
    precision = config.trainer.precision
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"trainer.precision={precision!r}; expected auto, bf16 or fp32")
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


def _schedules(config: Config, total_steps: int, steps_per_epoch: int, global_batch: int):
    optim = config.optim
    base_lr = scale_learning_rate(optim.lr, global_batch, optim.reference_batch_size, optim.lr_scaling)
    warmup_steps = min(total_steps, round(optim.warmup_epochs * steps_per_epoch))
    lr = cosine_schedule(base_lr, optim.final_lr, total_steps, warmup_steps)
    final_wd = optim.weight_decay if optim.final_weight_decay is None else optim.final_weight_decay
    weight_decay = cosine_schedule(optim.weight_decay, final_wd, total_steps)
    return lr, weight_decay


def _resume(checkpoints: Path, config: Config, model, optimizer) -> int:
    """Load the latest checkpoint in `checkpoints` if there is one; return the step to start at."""
    path = latest_checkpoint(checkpoints)
    if path is None:
        return 0
    state = load_checkpoint(path)
    if state.get("format_version") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format_version')!r}, "
                              f"expected {CHECKPOINT_FORMAT}")
    check_compatible(state["config"], config_to_dict(config), RESUME_KEYS)
    model.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    restore_rng_state(state["rng"])
    return int(state["step"])


def _checkpoint_state(step: int, epoch: int, config: Config, model, optimizer) -> dict:
    return {
        "format_version": CHECKPOINT_FORMAT,
        "step": step,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": config_to_dict(config),
        "rng": rng_state(),
    }


def train(config: Config, output_dir: str | Path, *, report: Callable[[dict], None] | None = None,
          context: DistributedContext | None = None) -> dict:
    """Pretrain as `config` says, writing into `output_dir`; returns the final metrics."""
    context = context or current_context()
    output_dir = Path(output_dir)
    checkpoints = output_dir / "checkpoints"
    if context.is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)

    dataset = load_dataset_info(config.data.path)
    entry = method_entry(config.method.name)
    recipe = build_recipe(entry.recipe, config.data.image_size, **config.data.recipe)
    loader = build_train_loader(
        dataset, recipe, batch_size=config.data.batch_size, rank=context.rank,
        world_size=context.world_size, seed=config.seed, device=context.device,
        num_threads=config.data.num_threads or default_threads(context.local_world_size),
        prefetch_depth=config.data.prefetch_depth, shuffle_buffer=config.data.shuffle_buffer,
    )
    steps_per_epoch = loader.steps_per_epoch
    total_steps = config.trainer.max_steps or config.trainer.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    global_batch = config.data.batch_size * context.world_size

    model = build_model(config).to(context.device)
    optimizer = build_optimizer(
        config.optim.name, model, lr=config.optim.lr, weight_decay=config.optim.weight_decay,
        momentum=config.optim.momentum, betas=config.optim.betas,
        exclude_bias_and_norm=config.optim.exclude_bias_and_norm,
    )
    lr_schedule, wd_schedule = _schedules(config, total_steps, steps_per_epoch, global_batch)
    start_step = _resume(checkpoints, config, model, optimizer)
    parallel_model = wrap_model(model, context)

    logger = RunLogger(output_dir / "tensorboard", total_steps, steps_per_epoch, start_step,
                       config_text=yaml.safe_dump(config_to_dict(config), sort_keys=False),
                       enabled=context.is_main)
    if start_step:
        logger.message(f"resuming from step {start_step} in {checkpoints}")
    metrics: dict[str, float] = {}
    window = {"images": 0, "seconds": 0.0, "wait": 0.0}
    batches = iter(loader)
    step = start_step
    try:
        while step < total_steps:
            step_started = time.perf_counter()
            batch = next(batches)
            data_ready = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = float(lr_schedule[step])
                if group.get("apply_weight_decay", True):
                    group["weight_decay"] = float(wd_schedule[step])
            with _autocast(config, context.device):
                outputs = parallel_model(batch)
            loss = outputs["loss"]
            if not torch.isfinite(loss.detach()).all():
                terms = {key: float(value.detach().float()) for key, value in outputs.items()}
                raise NonFiniteLossError(f"non-finite loss at step {step}: {terms}; the last good "
                                         f"checkpoint in {checkpoints} is intact")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.trainer.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.trainer.grad_clip)
            optimizer.step()
            if hasattr(model, "on_step_end"):
                model.on_step_end(step, total_steps)
            step += 1
            finished = time.perf_counter()
            window["images"] += global_batch
            window["seconds"] += finished - step_started
            window["wait"] += data_ready - step_started
            logger.advance()

            end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
            if step % config.trainer.log_every == 0 or end_of_epoch:
                terms = {key: float(value.detach().float()) for key, value in outputs.items()}
                metrics = mean_across_ranks(terms, context)
                metrics.update(lr=float(lr_schedule[step - 1]), weight_decay=float(wd_schedule[step - 1]),
                               images_per_second=window["images"] / max(window["seconds"], 1e-9),
                               data_wait_fraction=window["wait"] / max(window["seconds"], 1e-9),
                               epoch=(step - 1) // steps_per_epoch + 1)
                window = {"images": 0, "seconds": 0.0, "wait": 0.0}
                logger.scalars(step, metrics)
                if report is not None:
                    report({"step": step, **metrics})
            if end_of_epoch:
                logger.epoch_line((step - 1) // steps_per_epoch + 1, epochs, step, metrics)
            if step % config.trainer.checkpoint_every == 0 or step == total_steps:
                if context.is_main:
                    state = _checkpoint_state(step, (step - 1) // steps_per_epoch + 1, config, model, optimizer)
                    save_checkpoint(checkpoints, step, state, keep_last=config.trainer.keep_checkpoints)
                barrier(context)
    finally:
        logger.close()
        loader.close()
    summary = {"step": step, "total_steps": total_steps, "checkpoint": str(latest_checkpoint(checkpoints)),
               **metrics}
    if context.is_main:
        temporary = output_dir / ".metrics.json.tmp"
        temporary.write_text(json.dumps(summary, indent=1))
        temporary.replace(output_dir / "metrics.json")
    return summary
