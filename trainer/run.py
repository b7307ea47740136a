"""The built pieces of one training run, made by `build_run`: what `trainer.loop.train` steps.

`build_run(config, output_dir, context)` turns a config into a `Run`: the method (prepared for
the device, DDP-wrapped and optionally compiled for the forward), its optimizers and grad scalers
(one per optimizer step the method declares, `StepOptimizer`; one for most methods), the per-step
learning-rate and weight-decay schedules, the frozen last layer, the data stream,
the view recipe, the step counts, and rank 0's loggers; a checkpoint the run continues from
(its own latest, or `trainer.resume`) is put back into all of them. The order of the building is
part of exact resume: the random generators are restored last, so nothing drawn while building
shifts the first step's numbers.

The method is used through its protocol (`methods/protocol.py`): `optimizer_steps()` for which
optimizers over which parameters, `fixed_lr_parameters()` for their groups,
`last_layer_parameters()` for the frozen last layer, `on_step_end` after each step. A method with
several optimizer steps (an adversarial one) is wrapped by DDP with `find_unused_parameters`: each
step's forward reaches only the parameters that step's loss needs (the discriminator's step leaves
the generator out), and DDP has to be told which ones it will not see gradients for.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml

from selfsup.methods.protocol import OptimizerStep
from selfsup.pipeline.dataset import DatasetInfo, load_dataset_info
from selfsup.pipeline.loader import build_train_loader, default_threads
from selfsup.pipeline.node_staging import NodeStaging
from selfsup.pipeline.recipes import Recipe
from selfsup.trainer.checkpoint import restore_rng_state, save_checkpoint
from selfsup.trainer.config import Config, config_to_dict
from selfsup.trainer.data import DataStream, tensor_to_bytes
from selfsup.trainer.distributed import DistributedContext, barrier, wrap_model
from selfsup.trainer.model import (
    build_model, check_labels, prepare_model, recipe_for, resolve_tokenizer, seed_everything, size_memory_bank,
)
from selfsup.trainer.optimizers import DEFAULT_STEP, build_optimizer, resolved_optimizer_steps, scale_learning_rate
from selfsup.trainer.progress import LossLog, RunLogger
from selfsup.trainer.resume import (
    checkpoint_state, gather_rank_states, load_resume_state, rank_entry, restore_training_state, saved_loss_terms,
)
from selfsup.trainer.schedules import cosine_schedule
from selfsup.trainer.step import grad_scaler_for


def optimizer_for(config: Config, model: torch.nn.Module, step: OptimizerStep | None = None) -> torch.optim.Optimizer:
    """The optimizer of `config.optim` over the parameter groups of `step`'s parameters (all of
    `model`'s when None), a method's fixed-lr ones apart."""
    parameters = None if step is None else step.parameters
    chosen = None if parameters is None else {id(parameter) for parameter in parameters}
    fixed = [p for p in model.fixed_lr_parameters() if chosen is None or id(p) in chosen]
    return build_optimizer(
        config.optim.name, model, lr=config.optim.lr, weight_decay=config.optim.weight_decay,
        momentum=config.optim.momentum, betas=config.optim.betas,
        exclude_bias_and_norm=config.optim.exclude_bias_and_norm,
        fixed_lr_parameters=fixed, parameters=parameters,
    )


@dataclass
class StepOptimizer:
    """One optimizer step of the method: what it updates and minimises (`OptimizerStep`), its
    optimizer, its fp16 grad scaler (None otherwise), and the keyword arguments of its forward
    (`{"step": name}` for a method that declares its steps, `{}` for the default one)."""

    step: OptimizerStep
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    forward_arguments: dict

    @property
    def name(self) -> str:
        return self.step.name


def step_optimizers(config: Config, model: torch.nn.Module, device: torch.device | None) -> list[StepOptimizer]:
    """One `StepOptimizer` per optimizer step of `model`, in update order; grad scalers on `device`
    (None: no scalers, for checking a checkpoint)."""
    steps = resolved_optimizer_steps(model)
    declared = steps[0].name != DEFAULT_STEP
    return [StepOptimizer(step, optimizer_for(config, model, step),
                          None if device is None else grad_scaler_for(config.trainer.precision, device),
                          {"step": step.name} if declared else {})
            for step in steps]


def by_name(optimizers: list[StepOptimizer]) -> tuple[dict, dict]:
    """({step name: optimizer}, {step name: grad scaler or None}), in update order."""
    return ({entry.name: entry.optimizer for entry in optimizers},
            {entry.name: entry.scaler for entry in optimizers})


def check_resume_fits(config: Config, output_dir: str | Path) -> None:
    """Raise CheckpointError now if the checkpoint a run in `output_dir` would continue from (its own
    latest, or `trainer.resume`) does not fit `config`: its config, model state or optimizer groups.

    The launcher calls it before any worker starts (the workers would each fail the same way).
    Chooses the checkpoint as the workers will (`load_resume_state`: unreadable ones passed over,
    or, with none intact, the same CheckpointError), loads it and builds the model on the CPU once.
    """
    resume = load_resume_state(Path(output_dir) / "checkpoints", config.trainer.resume, config)
    if resume.state is not None:
        model = build_model(config, load_tokenizer=False)  # the checkpoint holds a tokenizer's weights
        optimizers, _ = by_name(step_optimizers(config, model, device=None))
        restore_training_state(resume.state, resume.path, model, optimizers)


def schedules(config: Config, total_steps: int, steps_per_epoch: int, global_batch: int):
    """(lr per step, weight decay per step, the scaled base lr)."""
    optim = config.optim
    base_lr = scale_learning_rate(optim.lr, global_batch, optim.reference_batch_size, optim.lr_scaling)
    warmup_steps = min(total_steps, round(optim.warmup_epochs * steps_per_epoch))
    lr = cosine_schedule(base_lr, optim.final_lr, total_steps, warmup_steps)
    final_wd = optim.weight_decay if optim.final_weight_decay is None else optim.final_weight_decay
    weight_decay = cosine_schedule(optim.weight_decay, final_wd, total_steps)
    return lr, weight_decay, base_lr


def batches_per_epoch(count: int, config: Config, world_size: int) -> int:
    batches = count // (config.data.batch_size * world_size)
    return batches - batches % config.trainer.accumulate_steps


@dataclass
class Run:
    """Everything one call of `train` works with; the loop's own state (the step) is apart."""

    config: Config
    context: DistributedContext
    checkpoints: Path
    recipe: Recipe
    model: torch.nn.Module  # the method itself: state, buffers, backbone
    parallel_model: torch.nn.Module  # DDP around it when the world is larger than one
    forward: Callable  # the parallel model, compiled with trainer.compile
    optimizers: list[StepOptimizer]  # in update order; one unless the method declares several steps
    data: DataStream
    lr_schedule: torch.Tensor
    wd_schedule: torch.Tensor
    base_lr: float
    frozen: list[torch.nn.Parameter]  # the last layer, frozen for the first `frozen_steps`
    frozen_steps: int
    start_step: int  # the checkpoint's step, 0 on a fresh start
    total_steps: int
    steps_per_epoch: int
    epochs: int
    global_batch: int  # images per optimizer step over all ranks
    logger: RunLogger
    loss_log: LossLog
    resumed_from: Path | None
    resume_warning: str | None  # the unreadable checkpoints passed over to reach `resumed_from`
    # the loss terms of step `start_step` (averaged over ranks) when it is a checkpoint's step
    start_loss_terms: dict[str, float] = field(default_factory=dict)

    def epoch_of(self, step: int) -> int:
        """The 1-based epoch that step `step` (1-based) belongs to."""
        return (step - 1) // self.steps_per_epoch + 1

    def save(self, step: int, loss_terms: dict[str, float]) -> Path | None:
        """Write the checkpoint of `step` (collective); its folder on rank 0, None on the other ranks."""
        ranks = gather_rank_states(self.data.state(), self.context)
        path = None
        if self.context.is_main:
            optimizers, scalers = by_name(self.optimizers)
            state = checkpoint_state(step, self.epoch_of(step), self.config, self.model, optimizers, scalers,
                                     ranks, loss_terms=loss_terms)
            path = save_checkpoint(self.checkpoints, step, state, keep_last=self.config.trainer.keep_checkpoints)
        self.loss_log.flush()
        barrier(self.context)
        return path

    def close(self) -> None:
        self.loss_log.close()
        self.logger.close()
        self.data.close()


def _data_stream(config: Config, context: DistributedContext, dataset: DatasetInfo, recipe: Recipe,
                 position: dict, staging: NodeStaging | None) -> DataStream:
    def on_skip(samples: list) -> None:  # every rank says what it leaves out (the logger speaks for rank 0 only)
        listed = "; ".join(f"{sample.shard} sample {sample.key}: {sample.reason}" for sample in samples[:5])
        more = f"; and {len(samples) - 5} more" if len(samples) > 5 else ""
        print(f"selfsup: rank {context.rank}: data.skip_corrupt: leaving out {len(samples)} damaged "
              f"samples ({listed}{more})", file=sys.stderr, flush=True)

    def build_loader(epoch: int, dali_checkpoint: bytes | None, excluded: frozenset = frozenset()):
        if context.device.type == "cuda":  # also called from the next-epoch thread
            torch.cuda.set_device(context.device)
        return build_train_loader(
            dataset, recipe, batch_size=config.data.batch_size, rank=context.rank,
            world_size=context.world_size, seed=config.seed, device=context.device,
            num_threads=config.data.num_threads or default_threads(context.local_world_size),
            prefetch_depth=config.data.prefetch_depth, shuffle_buffer=config.data.shuffle_buffer,
            epoch=epoch, resumable=True, dali_checkpoint=dali_checkpoint, staging=staging, excluded=excluded,
        )

    return DataStream(build_loader, epoch=position["epoch"], batches=position["batches"],
                      dali_checkpoint=None if position["dali"] is None else tensor_to_bytes(position["dali"]),
                      group=config.trainer.accumulate_steps, skip_damaged=config.data.skip_corrupt,
                      excluded=position.get("excluded", ()), on_skip=on_skip)


def build_run(config: Config, output_dir: Path, context: DistributedContext,
              staging: NodeStaging | None = None) -> Run:
    """The pieces of a run of `config` writing into `output_dir`, continued from its checkpoint if any."""
    trainer = config.trainer
    checkpoints = output_dir / "checkpoints"
    if context.is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
    if trainer.accumulate_steps < 1:
        raise ValueError(f"trainer.accumulate_steps={trainer.accumulate_steps}: expected 1 or more")
    seed_everything(config.seed)
    dataset = load_dataset_info(config.data.path)
    config = size_memory_bank(config, dataset.split("train").count)  # before the resume check compares configs
    check_labels(config, dataset)
    config = resolve_tokenizer(config)  # BEiT's tokenizer sizes, idem
    recipe = recipe_for(config)
    model = prepare_model(build_model(config), sync_batchnorm=config.model.sync_batchnorm,
                          channels_last=trainer.channels_last, world_size=context.world_size, device=context.device)
    optimizers = step_optimizers(config, model, context.device)
    resume = load_resume_state(checkpoints, trainer.resume, config)
    state, state_path = resume.state, resume.path
    rng, position = None, {"epoch": 0, "batches": 0, "dali": None}
    if state is not None:
        restore_training_state(state, state_path, model, *by_name(optimizers))
        rng, position = rank_entry(state, context, batches_per_epoch(dataset.split("train").count, config,
                                                                     context.world_size))
    start_step = int(state["step"]) if state is not None else 0
    data = _data_stream(config, context, dataset, recipe, position, staging)
    try:
        steps_per_epoch = data.batches_per_epoch // trainer.accumulate_steps
        total_steps = trainer.max_steps or trainer.epochs * steps_per_epoch
        global_batch = config.data.batch_size * context.world_size * trainer.accumulate_steps
        lr_schedule, wd_schedule, base_lr = schedules(config, total_steps, steps_per_epoch, global_batch)
        frozen = list(model.last_layer_parameters())
        parallel_model = wrap_model(model, context, find_unused_parameters=len(optimizers) > 1)
        forward = torch.compile(parallel_model) if trainer.compile else parallel_model
        if rng is not None:
            restore_rng_state(rng)  # last: nothing after this draws from the generators before the first step
        config_dict = config_to_dict(config)
        logger = RunLogger(output_dir / "tensorboard", total_steps, steps_per_epoch, start_step,
                           config_text=yaml.safe_dump(config_dict, sort_keys=False), enabled=context.is_main)
        loss_log = LossLog(output_dir / "losses.jsonl", start_step, enabled=context.is_main)
    except BaseException:
        data.close()
        raise
    if resume.warning:
        logger.message(f"warning: {resume.warning}")
    if start_step:
        logger.message(f"resuming from step {start_step} ({state_path})")
    else:
        logger.hyperparameters(config_dict)
    return Run(
        config=config, context=context, checkpoints=checkpoints, recipe=recipe, model=model,
        parallel_model=parallel_model, forward=forward, optimizers=optimizers,
        data=data, lr_schedule=lr_schedule, wd_schedule=wd_schedule, base_lr=base_lr, frozen=frozen,
        frozen_steps=round(trainer.freeze_last_layer_epochs * steps_per_epoch), start_step=start_step,
        total_steps=total_steps, steps_per_epoch=steps_per_epoch, epochs=math.ceil(total_steps / steps_per_epoch),
        global_batch=global_batch, logger=logger, loss_log=loss_log, resumed_from=state_path,
        resume_warning=resume.warning,
        start_loss_terms=(saved_loss_terms(state) or loss_log.start_terms) if state is not None else {},
    )
