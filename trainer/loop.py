"""The training function: plain PyTorch, the same in a lone process, a Ray Train worker or a Tune trial.

`train(config, output_dir)` reads the converted dataset with the DALI loader (rebuilt each epoch
so that every epoch's batches are a function of seed, epoch and rank), builds the method from
the registry, and runs the loop: per-step lr / weight-decay schedules, gradient accumulation,
bf16 autocast on GPU (fp16 with a grad scaler on request), gradient clipping, frozen last layer
epochs, DDP when the world is larger than one, TensorBoard, `losses.jsonl` and progress,
checkpoints every `trainer.checkpoint_every` steps, at the end and when stopped (SIGTERM/SIGINT),
and an optional kNN monitor every `eval.online_knn_every_epochs` epochs.

Rank 0 writes `output_dir/checkpoints/`, `output_dir/tensorboard/` and `output_dir/losses.jsonl`.
A run started again on the same output directory continues from its latest checkpoint exactly:
same batches, same random numbers, same losses.

Hooks for the caller (the cluster layer passes Ray's reporting there), all optional:
- `report(metrics)`: the metrics (with "step") every `log_every` steps and at each epoch end, on
  every rank;
- `on_checkpoint(path, step, metrics)`: right after each checkpoint is written, on every rank,
  once all ranks have passed the save; `path` is the new checkpoint folder on rank 0 and None on
  the others, `metrics` the step's metrics (with "step"), and for the run's last checkpoint (at
  its end, or where it stopped) the summary `train` returns. At a step that has both hooks' calls
  due, only `on_checkpoint` is called: each step reaches the caller at most once;
- `stop`: a `StopRequest` through which the caller asks for a clean stop, as a signal does.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from selfsup.methods.registry import method_entry
from selfsup.pipeline.dataset import load_dataset_info
from selfsup.pipeline.loader import build_train_loader, default_threads
from selfsup.pipeline.recipes import build_recipe
from selfsup.trainer.checkpoint import latest_checkpoint, restore_rng_state, save_checkpoint
from selfsup.trainer.config import Config, config_to_dict
from selfsup.trainer.data import DataStream, tensor_to_bytes
from selfsup.trainer.distributed import DistributedContext, barrier, current_context, mean_across_ranks, wrap_model
from selfsup.trainer.evaluate import online_knn
from selfsup.trainer.model import (
    backbone_options, build_model, check_labels, check_memory_bank, prepare_model, seed_everything,
    to_channels_last,
)
from selfsup.trainer.optimizers import build_optimizer, scale_learning_rate
from selfsup.trainer.preemption import StopRequest, handle_stop_signals
from selfsup.trainer.progress import LossLog, RunLogger
from selfsup.trainer.resume import (
    CHECKPOINT_FORMAT, RESUME_KEYS, checkpoint_state, gather_rank_states, load_resume_state, rank_entry,
    restore_training_state,
)
from selfsup.trainer.schedules import cosine_schedule
from selfsup.trainer.step import accumulate_gradients, apply_update, grad_scaler_for
from selfsup.errors import NonFiniteLossError

__all__ = ["CHECKPOINT_FORMAT", "RESUME_KEYS", "NonFiniteLossError", "StopRequest", "backbone_options",
           "build_model", "seed_everything", "train"]


def _schedules(config: Config, total_steps: int, steps_per_epoch: int, global_batch: int):
    optim = config.optim
    base_lr = scale_learning_rate(optim.lr, global_batch, optim.reference_batch_size, optim.lr_scaling)
    warmup_steps = min(total_steps, round(optim.warmup_epochs * steps_per_epoch))
    lr = cosine_schedule(base_lr, optim.final_lr, total_steps, warmup_steps)
    final_wd = optim.weight_decay if optim.final_weight_decay is None else optim.final_weight_decay
    weight_decay = cosine_schedule(optim.weight_decay, final_wd, total_steps)
    return lr, weight_decay, base_lr


def _batches_per_epoch(count: int, config: Config, world_size: int) -> int:
    batches = count // (config.data.batch_size * world_size)
    return batches - batches % config.trainer.accumulate_steps


def _snapshot_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [buffer.detach().clone() for buffer in model.buffers()]


def _restore_buffers(model: torch.nn.Module, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), saved):
            buffer.copy_(value)


# on_checkpoint(path, step, metrics): path is the checkpoint folder on rank 0, None on the other ranks
CheckpointHook = Callable[[Path | None, int, dict], None]


def optimizer_for(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer of `config.optim` over `model`'s parameter groups (a method's fixed-lr ones apart)."""
    return build_optimizer(
        config.optim.name, model, lr=config.optim.lr, weight_decay=config.optim.weight_decay,
        momentum=config.optim.momentum, betas=config.optim.betas,
        exclude_bias_and_norm=config.optim.exclude_bias_and_norm,
        fixed_lr_parameters=model.fixed_lr_parameters() if hasattr(model, "fixed_lr_parameters") else (),
    )


def check_resume_fits(config: Config, output_dir: str | Path) -> None:
    """Raise CheckpointError now if the checkpoint a run in `output_dir` would continue from (its own
    latest, or `trainer.resume`) does not fit `config`: its config, model state or optimizer groups.

    The launcher calls it before any worker starts (the workers would each fail the same way).
    Loads the checkpoint and builds the model on the CPU once.
    """
    state, state_path = load_resume_state(Path(output_dir) / "checkpoints", config.trainer.resume, config)
    if state is not None:
        model = build_model(config)
        restore_training_state(state, state_path, model, optimizer_for(config, model), scaler=None)


def train(config: Config, output_dir: str | Path, *, report: Callable[[dict], None] | None = None,
          on_checkpoint: CheckpointHook | None = None, context: DistributedContext | None = None,
          stop: StopRequest | None = None) -> dict:
    """Pretrain as `config` says, writing into `output_dir`; returns the final metrics."""
    context = context or current_context()
    stop = stop or StopRequest()
    output_dir = Path(output_dir)
    checkpoints = output_dir / "checkpoints"
    if context.is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
    trainer = config.trainer
    if trainer.accumulate_steps < 1:
        raise ValueError(f"trainer.accumulate_steps={trainer.accumulate_steps}: expected 1 or more")
    seed_everything(config.seed)

    dataset = load_dataset_info(config.data.path)
    check_memory_bank(config, dataset.split("train").count)
    check_labels(config, dataset)
    recipe = build_recipe(method_entry(config.method.name).recipe, config.data.image_size, **config.data.recipe)
    model = prepare_model(build_model(config), sync_batchnorm=config.model.sync_batchnorm,
                          channels_last=trainer.channels_last, world_size=context.world_size,
                          device=context.device)
    optimizer = optimizer_for(config, model)
    scaler = grad_scaler_for(trainer.precision, context.device)
    state, state_path = load_resume_state(checkpoints, trainer.resume, config)
    rng, position = None, {"epoch": 0, "batches": 0, "dali": None}
    if state is not None:
        restore_training_state(state, state_path, model, optimizer, scaler)
        batches_per_epoch = _batches_per_epoch(dataset.split("train").count, config, context.world_size)
        rng, position = rank_entry(state, context, batches_per_epoch)
    start_step = int(state["step"]) if state is not None else 0

    def build_loader(epoch: int, dali_checkpoint: bytes | None):
        if context.device.type == "cuda":  # also called from the next-epoch thread
            torch.cuda.set_device(context.device)
        return build_train_loader(
            dataset, recipe, batch_size=config.data.batch_size, rank=context.rank,
            world_size=context.world_size, seed=config.seed, device=context.device,
            num_threads=config.data.num_threads or default_threads(context.local_world_size),
            prefetch_depth=config.data.prefetch_depth, shuffle_buffer=config.data.shuffle_buffer,
            epoch=epoch, resumable=True, dali_checkpoint=dali_checkpoint,
        )

    data = DataStream(build_loader, epoch=position["epoch"], batches=position["batches"],
                      dali_checkpoint=None if position["dali"] is None else tensor_to_bytes(position["dali"]),
                      group=trainer.accumulate_steps)
    accumulate = trainer.accumulate_steps
    steps_per_epoch = data.batches_per_epoch // accumulate
    total_steps = trainer.max_steps or trainer.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    global_batch = config.data.batch_size * context.world_size * accumulate
    lr_schedule, wd_schedule, base_lr = _schedules(config, total_steps, steps_per_epoch, global_batch)
    frozen = list(model.last_layer_parameters()) if hasattr(model, "last_layer_parameters") else []
    frozen_steps = round(trainer.freeze_last_layer_epochs * steps_per_epoch)
    parallel_model = wrap_model(model, context)
    forward = torch.compile(parallel_model) if trainer.compile else parallel_model
    if rng is not None:
        restore_rng_state(rng)  # last: nothing after this draws from the generators before the first step

    config_dict = config_to_dict(config)
    logger = RunLogger(output_dir / "tensorboard", total_steps, steps_per_epoch, start_step,
                       config_text=yaml.safe_dump(config_dict, sort_keys=False), enabled=context.is_main)
    loss_log = LossLog(output_dir / "losses.jsonl", start_step, enabled=context.is_main)
    if start_step:
        logger.message(f"resuming from step {start_step} ({state_path})")
    else:
        logger.hyperparameters(config_dict)
    metrics: dict[str, float] = {}
    window = {"images": 0, "seconds": 0.0, "wait": 0.0}
    step, skipped, stopping = start_step, 0, False
    first_views: dict[str, torch.Tensor] | None = None

    def save(at_step: int) -> Path | None:
        """Write the checkpoint of `at_step`; its folder on rank 0, None on the other ranks."""
        ranks = gather_rank_states(data.state(), context)
        path = None
        if context.is_main:
            checkpoint = checkpoint_state(at_step, (at_step - 1) // steps_per_epoch + 1, config, model,
                                          optimizer, scaler, ranks)
            path = save_checkpoint(checkpoints, at_step, checkpoint, keep_last=trainer.keep_checkpoints)
        loss_log.flush()
        barrier(context)
        return path

    def summarize() -> dict:
        """What `train` returns: where the run stands, and the latest metrics."""
        summary = {"step": step, "start_step": start_step, "total_steps": total_steps,
                   "checkpoint": str(latest_checkpoint(checkpoints)), "skipped_steps": skipped, **metrics}
        if stopping and step < total_steps:
            summary["stopped"] = stop.reason
        return summary

    try:
        with handle_stop_signals(stop):
            while step < total_steps and not stopping:  # `stopping` is agreed by every rank
                step_started = time.perf_counter()
                waited = 0.0

                def next_batch() -> dict[str, torch.Tensor]:
                    nonlocal waited, first_views
                    asked = time.perf_counter()
                    batch = next(data)
                    waited += time.perf_counter() - asked
                    if step == 0 and first_views is None and context.is_main:
                        first_views = {key: value[:16].detach().cpu().clone() for key, value in batch.items()}
                    return to_channels_last(batch) if trainer.channels_last else batch

                for group in optimizer.param_groups:
                    # a method's fixed-lr parameters (SimSiam's predictor) keep the base learning rate
                    group["lr"] = base_lr if group.get("fixed_lr") else float(lr_schedule[step])
                    if group.get("apply_weight_decay", True):
                        group["weight_decay"] = float(wd_schedule[step])
                buffers = _snapshot_buffers(model) if trainer.skip_nonfinite else None
                optimizer.zero_grad(set_to_none=True)
                terms = accumulate_gradients(forward, parallel_model, next_batch, accumulate,
                                             autocast_precision=trainer.precision, device=context.device,
                                             scaler=scaler)
                flags = torch.stack([(~torch.isfinite(terms["loss"])).float(),
                                     torch.tensor(float(stop.requested), device=terms["loss"].device)])
                if context.world_size > 1:
                    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
                names = sorted(terms)
                values = torch.cat([torch.stack([terms[name] for name in names]), flags]).tolist()
                host_terms = dict(zip(names, values[:len(names)]))
                nonfinite, stopping = values[-2] > 0, values[-1] > 0
                if nonfinite and not trainer.skip_nonfinite:
                    last_good = latest_checkpoint(checkpoints)
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step + 1}: "
                        + ", ".join(f"{name}={value:.6g}" for name, value in host_terms.items())
                        + f"; the last good checkpoint ({last_good or 'none yet'}) is intact. Lower optim.lr, "
                        "set trainer.grad_clip, or set trainer.skip_nonfinite=true to skip such steps")
                if nonfinite:
                    optimizer.zero_grad(set_to_none=True)
                    _restore_buffers(model, buffers)
                    skipped += 1
                    logger.message(f"step {step + 1}: non-finite loss ({host_terms}); step skipped")
                else:
                    apply_update(optimizer, model.parameters(), grad_clip=trainer.grad_clip,
                                 frozen=frozen if step < frozen_steps else (), scaler=scaler)
                if hasattr(model, "on_step_end"):
                    model.on_step_end(step, total_steps)
                if stopping:
                    stop.request("stop requested on another rank")
                step += 1
                finished = time.perf_counter()
                window["images"] += global_batch
                window["seconds"] += finished - step_started
                window["wait"] += waited
                loss_log.write(step, host_terms)
                logger.advance()
                if first_views is not None and step == 1:
                    logger.views(first_views, recipe.mean, recipe.std, step=0)

                epoch = (step - 1) // steps_per_epoch + 1
                end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
                knn = None
                every = config.eval.online_knn_every_epochs
                if every and step % steps_per_epoch == 0 and epoch % every == 0:
                    knn = _online_knn(model, config, context)
                log_now = step % trainer.log_every == 0 or end_of_epoch or knn is not None
                checkpoint_now = step % trainer.checkpoint_every == 0 or step == total_steps or stopping
                if log_now or (checkpoint_now and on_checkpoint is not None):
                    metrics = mean_across_ranks(host_terms, context)
                    metrics.update(lr=float(lr_schedule[step - 1]), weight_decay=float(wd_schedule[step - 1]),
                                   images_per_second=window["images"] / max(window["seconds"], 1e-9),
                                   data_wait_fraction=window["wait"] / max(window["seconds"], 1e-9),
                                   epoch=epoch, skipped_steps=skipped)
                    if context.device.type == "cuda":
                        metrics["gpu_memory_gib"] = torch.cuda.max_memory_allocated(context.device) / 2**30
                if log_now:
                    window = {"images": 0, "seconds": 0.0, "wait": 0.0}
                    logger.scalars(step, metrics)
                    if knn is not None:
                        logger.scalars(step, knn, prefix="eval")
                        metrics.update(knn)
                    if report is not None and not (checkpoint_now and on_checkpoint is not None):
                        report({"step": step, **metrics})
                if end_of_epoch:
                    logger.epoch_line(epoch, epochs, step, metrics)
                if checkpoint_now:
                    saved = save(step)
                    if on_checkpoint is not None:
                        last = step == total_steps or stopping
                        on_checkpoint(saved, step, summarize() if last else {"step": step, **metrics})
            if stopping and step < total_steps:
                logger.message(f"stopped at step {step}/{total_steps} ({stop.reason}); checkpoint "
                               f"{latest_checkpoint(checkpoints)}; start again with the same output folder "
                               "to continue")
    finally:
        loss_log.close()
        logger.close()
        data.close()
    summary = summarize()
    if context.is_main:
        temporary = output_dir / ".metrics.json.tmp"
        temporary.write_text(json.dumps(summary, indent=1))
        temporary.replace(output_dir / "metrics.json")
    return summary


def _online_knn(model: torch.nn.Module, config: Config, context: DistributedContext) -> dict | None:
    """kNN top-1/top-5 on rank 0, shared with every rank (None without labels)."""
    result = None
    if context.is_main:
        knn = online_knn(model.backbone, config.data.path, image_size=config.data.image_size,
                         batch_size=config.eval.batch_size, k=config.eval.knn_k,
                         temperature=config.eval.knn_temperature, device=context.device)
        result = None if knn is None else {"knn_top1": knn["top1"], "knn_top5": knn["top5"]}
    if context.world_size > 1:
        shared = [result]
        torch.distributed.broadcast_object_list(shared, src=0)
        result = shared[0]
    return result
