"""What a training checkpoint holds, which one a run continues from, and putting it back.

A checkpoint (format 2) holds: the model's `state_dict` (teachers, queues, centers and their
schedules' current values are buffers in it), the optimizer and the fp16 grad scaler (`optimizer`,
`grad_scaler`; a method with several optimizer steps, an adversarial one, keeps each step's under
its name in `optimizers` and `grad_scalers`, in update order), the step, the
resolved config (every schedule is recomputed from config and step), and per rank the random
generators (torch, CUDA, numpy, Python) and the loader position (epoch, batches consumed in it,
DALI's checkpoint of the reader and augmentation generators), and the step's loss terms (averaged
over ranks: what a run started again with nothing left to train reports as its final loss). Rank 0 writes it; the per-rank
parts are gathered from every rank first.

A run continues from the newest of: its own latest checkpoint, and the one named by
`trainer.resume` (`selfsup train --resume CKPT`); the run's own wins a tie. A checkpoint that
cannot be read (a truncated or garbage state.pt, or none at all; `torch.load` fails on these at
once, so nothing is loaded twice to find out) is passed over with a warning naming it
(`ResumePoint.warning`): with `--resume`, the run continues from the checkpoint it names; without
it, from the run's newest intact checkpoint. When none is intact, a CheckpointError names the
unreadable one and says that `--resume` can name another. Config keys that change what the state
means (method and model, batch size, views, seed, optimizer) must agree; others (max_steps,
logging, threads) may change. A method option the checkpoint's config does not name (added to the
method after it was written) is compared at its default, the value that keeps the method as it was. A different number of
ranks continues too, from the same step, with the loader repositioned approximately (same epoch,
same number of samples).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_distributed

from selfsup.trainer.checkpoint import (
    check_compatible, checkpoints_to_try, latest_checkpoint, rng_state, step_of, try_load_checkpoint,
)

from selfsup.errors import CheckpointError
from selfsup.trainer.config import Config, config_to_dict
from selfsup.trainer.distributed import DistributedContext

CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)
# Keys that must agree between a checkpoint and the run that continues it (plus every method.* key).
RESUME_KEYS = ("method.name", "model.backbone", "model.small_input", "model.patch_size", "optim.name", "seed", "data.batch_size",
               "data.image_size", "data.recipe", "trainer.accumulate_steps")


def find_checkpoint(path: str | Path) -> Path:
    """A run folder, its checkpoints folder, a step folder or a state.pt file -> that checkpoint."""
    path = Path(path)
    for candidate in (path / "checkpoints", path):
        if candidate.is_dir() and not (candidate / "state.pt").exists():
            found = latest_checkpoint(candidate)
            if found is not None:
                return found
    if path.exists():
        return path
    raise CheckpointError(f"{path}: no checkpoint there (expected a run folder, a checkpoints folder, "
                          "a step-NNNNNNNN folder or a state.pt file)")


def resume_keys(saved_config: dict, current_config: dict) -> tuple[str, ...]:
    method_keys = set(saved_config.get("method") or {}) | set(current_config.get("method") or {})
    return RESUME_KEYS + tuple(sorted(f"method.{key}" for key in method_keys if key != "name"))


@dataclass(frozen=True)
class ResumePoint:
    """Where a run continues from: the loaded state and its path (both None on a fresh start), and
    the warning about the unreadable checkpoints passed over to get there (None when none was)."""

    state: dict | None = None
    path: Path | None = None
    warning: str | None = None


def load_resume_state(checkpoints: Path, explicit: str | None, config: Config) -> ResumePoint:
    """The checkpoint to continue from (see the module docstring), loaded once and checked against
    `config`. `checkpoints` is the run's own checkpoint folder, `explicit` trainer.resume."""
    named = find_checkpoint(explicit) if explicit else None
    passed_over: list[str] = []  # what is wrong with each unreadable checkpoint skipped, one line each
    for path in checkpoints_to_try(checkpoints):
        if named is not None and step_of(path) < step_of(named):
            break  # the named checkpoint is newer than the run's own
        state, problem = try_load_checkpoint(path)
        if state is not None:
            return _checked(state, path, config, _warning(passed_over, path, "the newest intact checkpoint "
                                                                             "(--resume CKPT picks another)"))
        passed_over.append(problem)
        if named is not None:
            break  # --resume names what to use when the run's newest cannot be read
    if named is not None:
        state, problem = try_load_checkpoint(named)
        if state is None:
            raise CheckpointError("; ".join([*passed_over, problem]) + "; it is the checkpoint --resume "
                                  "(trainer.resume) names: name an intact one")
        return _checked(state, named, config, _warning(passed_over, named, "the checkpoint --resume names"))
    if passed_over:
        raise CheckpointError("; ".join(passed_over) + f"; no intact checkpoint in {checkpoints} to continue "
                              "from: name one with --resume CKPT (trainer.resume), or move that folder aside "
                              "to start afresh")
    return ResumePoint()


def _warning(passed_over: list[str], used: Path, which: str) -> str | None:
    """'PROBLEM; continuing from USED, WHICH' when unreadable checkpoints were passed over, else None."""
    return "; ".join(passed_over) + f"; continuing from {used}, {which}" if passed_over else None


def with_new_method_options(saved_config: dict, method_options) -> dict:
    """A checkpoint's config with the options of the same method that it does not name (options the
    method gained after the checkpoint was written) at their defaults, for comparing: a new option's
    default keeps the method as it was (inpainting's `adversarial_weight` 0)."""
    section = saved_config.get("method") or {}
    if section.get("name") != method_options.name:
        return saved_config
    defaults = dataclasses.asdict(type(method_options)())
    return {**saved_config, "method": {**defaults, **section}}


def _checked(state: dict, path: Path, config: Config, warning: str | None) -> ResumePoint:
    """`state`, read from `path`, as the point to continue from once its format and config fit."""
    if state.get("format_version") not in READABLE_FORMATS:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format_version')!r}, "
                              f"expected one of {READABLE_FORMATS}")
    current = config_to_dict(config)
    saved = with_new_method_options(state["config"], config.method)
    try:
        check_compatible(saved, current, resume_keys(saved, current))
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    return ResumePoint(state, path, warning)


def restore_training_state(state: dict, path: Path, model: torch.nn.Module,
                           optimizers: dict[str, torch.optim.Optimizer], scalers: dict | None = None) -> None:
    """Put the model, the optimizers' and the grad scalers' state of the checkpoint at `path` back.

    `optimizers` (and `scalers`, None for none) map each optimizer step's name to its optimizer
    (grad scaler or None), in update order. A checkpoint whose config fits but whose tensors do
    not (written by another version of a method, e.g. a SimSiam run from before its predictor had
    learning-rate groups of its own) raises CheckpointError naming the file and what differs,
    instead of torch's bare message.
    """
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: its model state does not fit this run's "
                              f"{type(model).__name__} (written by another version of the method?): "
                              f"{error}") from None
    saved, saved_scalers = _saved_optimizers(state, list(optimizers))
    if list(saved) != list(optimizers):
        raise CheckpointError(f"{path}: it has the optimizers [{', '.join(saved)}], this run's "
                              f"{type(model).__name__} steps [{', '.join(optimizers)}]: it was written by "
                              "another version or configuration of the method")
    for name, optimizer in optimizers.items():
        layout, current = _group_layout(saved[name]["param_groups"]), _group_layout(optimizer.param_groups)
        if layout != current:
            where = "optimizer" if len(optimizers) == 1 else f"{name} optimizer"
            raise CheckpointError(
                f"{path}: its {where} has the parameter groups [{layout}], this run's {type(model).__name__} "
                f"makes [{current}] (name (tensors)): it was written by another version of the method; "
                "train from scratch or with the version that wrote it")
        optimizer.load_state_dict(saved[name])
        scaler = (scalers or {}).get(name)
        if scaler is not None and saved_scalers.get(name):
            scaler.load_state_dict(saved_scalers[name])


def _saved_optimizers(state: dict, names: list[str]) -> tuple[dict[str, dict], dict[str, dict | None]]:
    """A checkpoint's optimizer and grad-scaler states by step name: `optimizers` / `grad_scalers`,
    or the one `optimizer` / `grad_scaler` (under the run's name for it when it has one step)."""
    if "optimizers" in state:
        return dict(state["optimizers"]), dict(state.get("grad_scalers") or {})
    name = names[0] if len(names) == 1 else "one optimizer"
    return {name: state["optimizer"]}, {name: state.get("grad_scaler")}


def optimizer_entries(optimizers: dict[str, torch.optim.Optimizer], scalers: dict) -> dict:
    """The checkpoint entries of the optimizers and grad scalers (None where none): one optimizer as
    `optimizer` and `grad_scaler`, as before methods could have several; several as `optimizers`
    and `grad_scalers`, each step's under its name, in update order."""
    scaler_states = {name: scaler.state_dict() if scaler is not None else None for name, scaler in scalers.items()}
    if len(optimizers) == 1:
        (name, optimizer), = optimizers.items()
        return {"optimizer": optimizer.state_dict(), "grad_scaler": scaler_states.get(name)}
    return {"optimizers": {name: optimizer.state_dict() for name, optimizer in optimizers.items()},
            "grad_scalers": scaler_states}


def _group_layout(param_groups: list[dict]) -> str:
    """"decay (12), no_decay (30)": each optimizer group's name and number of tensors."""
    return ", ".join(f"{group.get('name', '?')} ({len(group['params'])})" for group in param_groups)


def gather_rank_states(data_state: dict, context: DistributedContext) -> list[dict]:
    """Every rank's {'rng', 'data'} (RNG states and loader position), in rank order, on every rank."""
    mine = {"rng": rng_state(), "data": data_state}
    if context.world_size == 1:
        return [mine]
    gathered: list = [None] * context.world_size
    torch_distributed.all_gather_object(gathered, mine)
    return gathered


def checkpoint_state(step: int, epoch: int, config: Config, model: torch.nn.Module,
                     optimizers: dict[str, torch.optim.Optimizer], scalers: dict, ranks: list[dict],
                     loss_terms: dict[str, float] | None = None) -> dict:
    """What rank 0 saves at `step`; `optimizers` and `scalers` by optimizer step name (see
    `optimizer_entries`); `loss_terms` are the step's loss terms (averaged over ranks)."""
    return {
        "format_version": CHECKPOINT_FORMAT,
        "step": step,
        "epoch": epoch,
        "model": model.state_dict(),
        **optimizer_entries(optimizers, scalers),
        "config": config_to_dict(config),
        "rng": ranks[0]["rng"],
        "ranks": ranks,
        "loss_terms": {name: float(value) for name, value in (loss_terms or {}).items()},
    }


def saved_loss_terms(state: dict) -> dict[str, float]:
    """The loss terms of a checkpoint's step; {} for a checkpoint written before they were kept."""
    return {str(name): float(value) for name, value in (state.get("loss_terms") or {}).items()}


def rank_entry(state: dict, context: DistributedContext, batches_per_epoch: int) -> tuple[dict, dict]:
    """(rng state, loader position {'epoch', 'batches', 'dali'}) for this rank from a loaded state."""
    ranks = state.get("ranks")
    step = int(state["step"])
    if not ranks:  # format 1: position from the step, loader replayed
        epoch, batches = divmod(step, batches_per_epoch)
        return state["rng"], {"epoch": epoch, "batches": batches, "dali": None}
    if len(ranks) == context.world_size:
        entry = ranks[context.rank]
        return entry["rng"], dict(entry["data"])
    saved = ranks[0]["data"]
    samples = saved["batches"] * len(ranks)
    batches = min(samples // context.world_size, batches_per_epoch)
    return ranks[0]["rng"], {"epoch": saved["epoch"], "batches": batches, "dali": None}
