"""The training function: plain PyTorch, the same in a lone process, a Ray Train worker or a Tune trial.

`train(config, output_dir)` reads the converted dataset with the DALI loader (rebuilt each epoch
so that every epoch's batches are a function of seed, epoch and rank), builds the method from
the registry, and runs the loop: per-step lr / weight-decay schedules, gradient accumulation,
the method's optimizers in its update order (one for most; an adversarial method's discriminator
and generator in turn, each with its own grad scaler, on the same micro-batches),
bf16 autocast on GPU (fp16 with a grad scaler on request), gradient clipping, frozen last layer
epochs, DDP when the world is larger than one, TensorBoard, `losses.jsonl` and progress,
checkpoints every `trainer.checkpoint_every` steps, at the end and when stopped (SIGTERM/SIGINT),
and an optional kNN monitor every `eval.online_knn_every_epochs` epochs.

Rank 0 writes `output_dir/checkpoints/`, `output_dir/tensorboard/` and `output_dir/losses.jsonl`.
A run started again on the same output directory continues from its latest checkpoint exactly:
same batches, same random numbers, same losses (a newest checkpoint that cannot be read is passed
over with a warning: `selfsup.trainer.resume`). `train` takes no lock on `output_dir`: the commands hold
it around the whole run (`selfsup.api.train`, `selfsup tune`), also while Ray workers or Tune
trials in other processes call this function (taking it again there would be refused).

The loop reads as torchtitan's trainer does: `build_run` (`trainer.run`) makes the run's pieces
once; each iteration is one `train_step` (the optimizer step: its loss terms on the host, and
whether any rank saw a non-finite loss or was asked to stop), then the small decisions
`should_evaluate`, `should_log` and `should_checkpoint` say what follows it. `MetricsWindow`
measures images per second and the data-wait fraction between two logged steps. The summary
`train` returns (and `metrics.json`) always holds the last step's loss terms: this call's, or,
when no step was left to train, those kept with the checkpoint it started from.

What a caller may pass besides the config (the cluster layer passes Ray's reporting), all optional:
- `report(metrics)`: the metrics (with "step") every `log_every` steps and at each epoch end, on
  every rank;
- `on_checkpoint(path, step, metrics)`: right after each checkpoint is written, on every rank,
  once all ranks have passed the save; `path` is the new checkpoint folder on rank 0 and None on
  the others, `metrics` the step's metrics (with "step"), and for the run's last checkpoint (at
  its end, or where it stopped) the summary `train` returns. At a step that has both hooks' calls
  due, only `on_checkpoint` is called: each step reaches the caller at most once;
- `stop`: a `StopRequest` through which the caller asks for a clean stop, as a signal does;
- `staging`: the session of a dataset staged per epoch onto this node (`pipeline.node_staging`,
  `cluster.train_job.stage_if_remote`), handed to the train loader.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from selfsup.errors import NonFiniteLossError
from selfsup.pipeline.node_staging import NodeStaging
from selfsup.trainer.checkpoint import latest_checkpoint
from selfsup.trainer.config import Config
from selfsup.trainer.data import DataStream
from selfsup.trainer.distributed import DistributedContext, current_context, mean_across_ranks
from selfsup.trainer.evaluate import online_knn
from selfsup.trainer.model import backbone_options, build_model, seed_everything, to_channels_last
from selfsup.trainer.preemption import StopRequest, handle_stop_signals
from selfsup.trainer.resume import CHECKPOINT_FORMAT, RESUME_KEYS
from selfsup.trainer.run import Run, StepOptimizer, build_run, check_resume_fits, optimizer_for
from selfsup.trainer.step import accumulate_gradients, apply_update

__all__ = ["CHECKPOINT_FORMAT", "RESUME_KEYS", "NonFiniteLossError", "StopRequest", "backbone_options",
           "build_model", "check_resume_fits", "optimizer_for", "seed_everything", "train", "train_step"]

# on_checkpoint(path, step, metrics): path is the checkpoint folder on rank 0, None on the other ranks
CheckpointHook = Callable[[Path | None, int, dict], None]


# --- one step --------------------------------------------------------------------------------


class Batches:
    """The step's source of micro-batches: `next(data)`, timed, in channels-last layout on request;
    with `keep_first_views`, the first batch's first 16 samples are kept (for TensorBoard)."""

    def __init__(self, data: DataStream, *, channels_last: bool, keep_first_views: bool):
        self.data, self.channels_last, self.keep_first_views = data, channels_last, keep_first_views
        self.waited = 0.0  # seconds spent waiting for batches, since the caller last reset it
        self.first_views: dict[str, torch.Tensor] | None = None

    def __call__(self) -> dict[str, torch.Tensor]:
        asked = time.perf_counter()
        batch = next(self.data)
        self.waited += time.perf_counter() - asked
        if self.keep_first_views:
            self.first_views = {key: value[:16].detach().cpu().clone() for key, value in batch.items()}
            self.keep_first_views = False
        return to_channels_last(batch) if self.channels_last else batch


@dataclass(frozen=True)
class StepResult:
    terms: dict[str, float]  # this rank's loss terms, on the host
    nonfinite: bool  # some rank's loss was not finite (agreed by every rank)
    stop: bool  # some rank was asked to stop (agreed by every rank)
    data_wait: float  # seconds this step waited for its batches


def _set_schedules(run: Run, step: int) -> None:
    for entry in run.optimizers:
        for group in entry.optimizer.param_groups:
            # a method's fixed-lr parameters (SimSiam's predictor) keep the base learning rate
            lr = run.base_lr if group.get("fixed_lr") else float(run.lr_schedule[step])
            group["lr"] = lr * entry.step.lr_multiplier
            if group.get("apply_weight_decay", True):
                group["weight_decay"] = float(run.wd_schedule[step])


def _agreed_terms(terms: dict[str, torch.Tensor], loss_key: str, stop_requested: bool,
                  context: DistributedContext) -> tuple[dict[str, float], bool, bool]:
    """(the terms on the host, any rank's `loss_key` non-finite, any rank asked to stop): one
    transfer, one all-reduce."""
    flags = torch.stack([(~torch.isfinite(terms[loss_key])).float(),
                         torch.tensor(float(stop_requested), device=terms[loss_key].device)])
    if context.world_size > 1:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    names = sorted(terms)
    values = torch.cat([torch.stack([terms[name] for name in names]), flags]).tolist()
    return dict(zip(names, values[:len(names)])), values[-2] > 0, values[-1] > 0


def _snapshot_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [buffer.detach().clone() for buffer in model.buffers()]


def _restore_buffers(model: torch.nn.Module, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), saved):
            buffer.copy_(value)


def _batch_sources(run: Run, batches: Batches) -> list[Callable[[], dict]]:
    """Per optimizer step, where its micro-batches come from: the stream itself for a method with one
    optimizer; for several, the step's `trainer.accumulate_steps` batches drawn once and replayed to
    each optimizer step, so that the generator and the discriminator see the same images."""
    if len(run.optimizers) == 1:
        return [batches]
    drawn = [batches() for _ in range(run.config.trainer.accumulate_steps)]
    return [iter(drawn).__next__ for _ in run.optimizers]


def _optimizer_step(run: Run, entry: StepOptimizer, step: int, next_batch: Callable[[], dict],
                    stop: StopRequest) -> tuple[dict[str, float], bool, bool]:
    """One optimizer's part of step `step`: every optimizer's gradients cleared (so that none carries
    another step's into this one), its micro-batches forward (`forward(batch, step=name)` for a method
    that declares its steps) and backward of its loss, then its update unless that loss is non-finite
    on a rank. Returns (its terms on the host, non-finite, stop requested), agreed by every rank."""
    trainer = run.config.trainer
    for each in run.optimizers:
        each.optimizer.zero_grad(set_to_none=True)
    forward = functools.partial(run.forward, **entry.forward_arguments) if entry.forward_arguments else run.forward
    terms = accumulate_gradients(forward, run.parallel_model, next_batch, trainer.accumulate_steps,
                                 autocast_precision=trainer.precision, device=run.context.device,
                                 scaler=entry.scaler, loss_key=entry.step.loss)
    host_terms, nonfinite, stopping = _agreed_terms(terms, entry.step.loss, stop.requested, run.context)
    if not nonfinite:
        apply_update(entry.optimizer, entry.step.parameters, grad_clip=trainer.grad_clip,
                     frozen=run.frozen if step < run.frozen_steps else (), scaler=entry.scaler)
    return host_terms, nonfinite, stopping


def train_step(run: Run, step: int, stop: StopRequest, batches: Batches) -> StepResult:
    """Optimizer step `step` (0-based): the scheduled lr and weight decay, then for each of the
    method's optimizers in its update order (one for most methods) `trainer.accumulate_steps`
    micro-batches forward and backward and its update, or, on a non-finite loss on any rank,
    NonFiniteLossError (naming the step and terms) or, with `trainer.skip_nonfinite`, no update (nor
    any by the optimizers after it) and the model's buffers as they were before it; then the
    method's end-of-step update."""
    trainer = run.config.trainer
    _set_schedules(run, step)
    batches.waited = 0.0
    host_terms: dict[str, float] = {}
    nonfinite = stopping = False
    for entry, next_batch in zip(run.optimizers, _batch_sources(run, batches)):
        buffers = _snapshot_buffers(run.model) if trainer.skip_nonfinite else None
        terms, nonfinite, stop_asked = _optimizer_step(run, entry, step, next_batch, stop)
        host_terms.update(terms)
        stopping = stopping or stop_asked
        if nonfinite and not trainer.skip_nonfinite:
            last_good = latest_checkpoint(run.checkpoints)
            raise NonFiniteLossError(
                f"non-finite loss at step {step + 1}: "
                + ", ".join(f"{name}={value:.6g}" for name, value in host_terms.items())
                + f"; the last good checkpoint ({last_good or 'none yet'}) is intact. Lower optim.lr, "
                "set trainer.grad_clip, or set trainer.skip_nonfinite=true to skip such steps")
        if nonfinite:
            entry.optimizer.zero_grad(set_to_none=True)
            _restore_buffers(run.model, buffers)
            break
    run.model.on_step_end(step, run.total_steps)
    return StepResult(host_terms, nonfinite, stopping, batches.waited)


# --- what follows a step ---------------------------------------------------------------------


@dataclass
class MetricsWindow:
    """Images, seconds and data-wait seconds of the steps since the last logged one."""

    images: int = 0
    seconds: float = 0.0
    data_wait: float = 0.0

    def add(self, images: int, seconds: float, data_wait: float) -> None:
        self.images += images
        self.seconds += seconds
        self.data_wait += data_wait

    def rates(self) -> dict[str, float]:
        seconds = max(self.seconds, 1e-9)
        return {"images_per_second": self.images / seconds, "data_wait_fraction": self.data_wait / seconds}

    def reset(self) -> None:
        self.images, self.seconds, self.data_wait = 0, 0.0, 0.0


def is_end_of_epoch(step: int, steps_per_epoch: int, total_steps: int) -> bool:
    return step % steps_per_epoch == 0 or step == total_steps


def should_evaluate(step: int, steps_per_epoch: int, every_epochs: int) -> bool:
    """The online kNN monitor: after every `every_epochs`-th full epoch (0: never)."""
    return bool(every_epochs) and step % steps_per_epoch == 0 and (step // steps_per_epoch) % every_epochs == 0


def should_log(step: int, log_every: int, end_of_epoch: bool, evaluated: bool) -> bool:
    return step % log_every == 0 or end_of_epoch or evaluated


def should_checkpoint(step: int, checkpoint_every: int, total_steps: int, stopping: bool) -> bool:
    return step % checkpoint_every == 0 or step == total_steps or stopping


@dataclass
class Progress:
    """Where the loop stands: the steps done, skipped, whether every rank agreed to stop, the latest
    metrics (at the last logged or checkpointed step) and the last step's loss terms over ranks."""

    step: int
    loss_terms: dict[str, float]
    skipped_steps: int = 0
    stopping: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    window: MetricsWindow = field(default_factory=MetricsWindow)

    def stopped_early(self, total_steps: int) -> bool:
        return self.stopping and self.step < total_steps


def _step_metrics(run: Run, progress: Progress, terms: dict[str, float]) -> dict[str, float]:
    """The step's metrics, its loss terms averaged over ranks (collective); keeps those terms."""
    progress.loss_terms = dict(mean_across_ranks(terms, run.context))
    step = progress.step
    metrics = {**progress.loss_terms, "lr": float(run.lr_schedule[step - 1]),
               "weight_decay": float(run.wd_schedule[step - 1]), **progress.window.rates(),
               "epoch": run.epoch_of(step), "skipped_steps": progress.skipped_steps}
    if run.config.data.skip_corrupt:  # damaged samples left out, each rank's count summed
        left_out = mean_across_ranks({"left_out": float(len(run.data.excluded))}, run.context)["left_out"]
        metrics["skipped_samples"] = round(left_out * run.context.world_size)
    if run.context.device.type == "cuda":
        metrics["gpu_memory_gib"] = torch.cuda.max_memory_allocated(run.context.device) / 2**30
    return metrics


def summarize(run: Run, progress: Progress, stop: StopRequest) -> dict:
    """What `train` returns: where the run stands, the last step's loss terms and the latest metrics."""
    summary = {"step": progress.step, "start_step": run.start_step, "total_steps": run.total_steps,
               "checkpoint": str(latest_checkpoint(run.checkpoints)), "skipped_steps": progress.skipped_steps,
               **progress.loss_terms, **progress.metrics}
    if progress.stopped_early(run.total_steps):
        summary["stopped"] = stop.reason
    if run.resume_warning:  # unreadable checkpoints were passed over: the run says which, and where it went on
        summary["resumed_from"], summary["resume_warning"] = str(run.resumed_from), run.resume_warning
    return summary


def _after_step(run: Run, progress: Progress, result: StepResult, stop: StopRequest,
                report: Callable[[dict], None] | None, on_checkpoint: CheckpointHook | None) -> None:
    """Losses, monitor, logs, hooks and checkpoint of the step just done (`progress.step`)."""
    step, config = progress.step, run.config
    end_of_epoch = is_end_of_epoch(step, run.steps_per_epoch, run.total_steps)
    knn = None
    if should_evaluate(step, run.steps_per_epoch, config.eval.online_knn_every_epochs):
        knn = _online_knn(run.model, config, run.context)
    log_now = should_log(step, config.trainer.log_every, end_of_epoch, evaluated=knn is not None)
    checkpoint_now = should_checkpoint(step, config.trainer.checkpoint_every, run.total_steps, progress.stopping)
    if log_now or checkpoint_now:  # every rank decides alike: the average over ranks is collective
        progress.metrics = _step_metrics(run, progress, result.terms)
    metrics = progress.metrics
    if log_now:
        progress.window.reset()
        run.logger.scalars(step, metrics)
        if knn is not None:
            run.logger.scalars(step, knn, prefix="eval")
            metrics.update(knn)
        if report is not None and not (checkpoint_now and on_checkpoint is not None):
            report({"step": step, **metrics})
    if end_of_epoch:
        run.logger.epoch_line(run.epoch_of(step), run.epochs, step, metrics)
    if checkpoint_now:
        saved = run.save(step, progress.loss_terms)
        if on_checkpoint is not None:
            last = step == run.total_steps or progress.stopping
            on_checkpoint(saved, step, summarize(run, progress, stop) if last else {"step": step, **metrics})


def _record_step(run: Run, progress: Progress, result: StepResult, seconds: float, batches: Batches,
                 stop: StopRequest) -> None:
    """Count the step just done: skipped or not, the agreed stop, its time, its loss line."""
    if result.nonfinite:
        progress.skipped_steps += 1
        run.logger.message(f"step {progress.step + 1}: non-finite loss ({result.terms}); step skipped")
    progress.stopping = result.stop
    if result.stop:
        stop.request("stop requested on another rank")
    progress.step += 1
    progress.window.add(run.global_batch, seconds, result.data_wait)
    run.loss_log.write(progress.step, result.terms)
    run.logger.advance()
    if batches.first_views is not None and progress.step == 1:
        run.logger.views(batches.first_views, run.recipe.mean, run.recipe.std, step=0)


# --- the loop --------------------------------------------------------------------------------


def train(config: Config, output_dir: str | Path, *, report: Callable[[dict], None] | None = None,
          on_checkpoint: CheckpointHook | None = None, context: DistributedContext | None = None,
          stop: StopRequest | None = None, staging: NodeStaging | None = None) -> dict:
    """Pretrain as `config` says, writing into `output_dir`; returns the final metrics."""
    context, stop, output_dir = context or current_context(), stop or StopRequest(), Path(output_dir)
    run = build_run(config, output_dir, context, staging)
    progress = Progress(step=run.start_step, loss_terms=dict(run.start_loss_terms))
    batches = Batches(run.data, channels_last=config.trainer.channels_last,
                      keep_first_views=context.is_main and run.start_step == 0)
    try:
        with handle_stop_signals(stop):
            while progress.step < run.total_steps and not progress.stopping:  # `stopping`: agreed by every rank
                started = time.perf_counter()
                result = train_step(run, progress.step, stop, batches)
                _record_step(run, progress, result, time.perf_counter() - started, batches, stop)
                _after_step(run, progress, result, stop, report, on_checkpoint)
            if progress.stopped_early(run.total_steps):
                run.logger.message(f"stopped at step {progress.step}/{run.total_steps} ({stop.reason}); checkpoint "
                                   f"{latest_checkpoint(run.checkpoints)}; start again with the same output folder "
                                   "to continue")
    finally:
        run.close()
    summary = summarize(run, progress, stop)
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
