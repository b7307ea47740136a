"""Pretraining through Ray Train: one DDP rank per worker, the plain training function in each.

The Ray-specific lines are the TorchTrainer set-up in `run_training` and the few calls marked
`# Ray:` in the worker; everything else is `trainer.loop.train`, which runs unchanged outside Ray.

In each worker, before training:
- a dataset given as a URI (`s3://`, `gs://`, `file://`) is staged onto the node's local disk
  (`pipeline.staging`), and the config points at the local copy;
- the latest checkpoint Ray holds for this run (after a worker failure, or a run started again
  with the same `--storage`) is downloaded when the output folder has nothing as recent, and
  handed to the trainer as `trainer.resume`.

During training the trainer calls `report(metrics)` every `trainer.log_every` steps on every
rank (`RayReporter`). Rank 0 appends the metrics to `OUTPUT/reports.jsonl` and hands Ray the
newest checkpoint the trainer wrote since the last report, which Ray copies to the storage path.
After training, a last report carries the final checkpoint and the Ray node of every rank.

Fault tolerance is Ray's: with `max_failures=K`, a dead worker makes Ray restart the whole
worker group, and the training function continues from the latest checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import uuid
from pathlib import Path

import ray.train
import torch.distributed
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from cluster.local_ray import ensure_ray
from pipeline.staging import is_uri, stage_dataset
from trainer.checkpoint import latest_checkpoint
from trainer.config import Config, config_from_dict, config_to_dict, save_config
from trainer.loop import train

# Ray Train would otherwise both log and echo every print() of the workers (each line twice).
WORKER_ENVIRONMENT = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
REPORTS_FILE = "reports.jsonl"
RESTORED_FOLDER = "restored"  # OUTPUT/restored/step-N: a checkpoint downloaded from Ray's storage
STAGING_VARIABLE = "SELFSUP_STAGING_DIR"  # where a node keeps staged shards (default: a temp folder)
STAGING_LIMIT_VARIABLE = "SELFSUP_STAGING_LIMIT"  # bytes of staged data a node may keep, e.g. 200GB
# Test hook: the worker of rank KILL_RANK kills its own process (SIGKILL) when it reports step
# KILL_AT_STEP, once per output folder. Used by tests/cluster/test_fault_tolerance.py.
KILL_AT_STEP_VARIABLE = "SELFSUP_TEST_KILL_AT_STEP"
KILL_RANK_VARIABLE = "SELFSUP_TEST_KILL_RANK"


def _step_of(path: Path | None) -> int:
    """step-00000012 -> 12; None or another name -> -1."""
    if path is None:
        return -1
    try:
        return int(path.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


class RayReporter:
    """The `report` callback of `trainer.loop.train` inside a Ray Train worker."""

    def __init__(self, output: Path, rank: int):
        self.output = output
        self.rank = rank
        self.checkpoints = output / "checkpoints"
        self.reported_step = _step_of(latest_checkpoint(self.checkpoints)) if rank == 0 else -1
        self.kill_step = int(os.environ.get(KILL_AT_STEP_VARIABLE, "0") or 0)
        self.kill_rank = int(os.environ.get(KILL_RANK_VARIABLE, "1") or 1)

    def __call__(self, metrics: dict) -> None:
        if self.rank == 0:
            record = {**metrics, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}  # Ray
            with open(self.output / REPORTS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        self._maybe_kill(int(metrics.get("step", 0)))
        self._report(metrics)

    def finish(self, metrics: dict) -> None:
        """The last report: the final checkpoint, and on which Ray node each rank ran."""
        node = ray.get_runtime_context().get_node_id()  # Ray
        nodes = [node]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            nodes = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(nodes, node)
        self._report({**metrics, "worker_nodes": nodes})

    def _report(self, metrics: dict) -> None:
        checkpoint, name = None, None
        if self.rank == 0:
            newest = latest_checkpoint(self.checkpoints)
            if newest is not None and _step_of(newest) > self.reported_step:
                checkpoint, name = ray.train.Checkpoint.from_directory(str(newest)), newest.name  # Ray
                self.reported_step = _step_of(newest)
        # Ray: a barrier across ranks; Ray copies rank 0's checkpoint folder to the storage path
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name,
                         delete_local_checkpoint_after_upload=False)

    def _maybe_kill(self, step: int) -> None:
        if not self.kill_step or step != self.kill_step or self.rank != self.kill_rank:
            return
        marker = self.output / f".test-killed-at-step-{step}"
        if marker.exists():
            return
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


def restore_from_ray(output: Path) -> Path | None:
    """Download Ray's latest checkpoint of this run unless OUTPUT/checkpoints has one as recent."""
    checkpoint = ray.train.get_checkpoint()  # Ray: None on a first start
    if checkpoint is None:
        return None
    name = Path(checkpoint.path).name
    target = output / RESTORED_FOLDER / name
    if _step_of(latest_checkpoint(output / "checkpoints")) >= _step_of(target):
        return None
    if not (target / "state.pt").exists():
        temporary = target.with_name(f".tmp-{name}-{uuid.uuid4().hex}")
        checkpoint.to_directory(str(temporary))  # Ray: from the storage path (pyarrow)
        try:
            os.rename(temporary, target)  # another rank on this node may have won the race
        except OSError:
            shutil.rmtree(temporary, ignore_errors=True)
    return target


def stage_if_remote(config: Config) -> Config:
    """`config` with data.path on local disk: a URI's dataset staged into this node's cache."""
    if not is_uri(str(config.data.path)):
        return config
    cache = Path(os.environ.get(STAGING_VARIABLE) or Path(os.environ.get("TMPDIR", "/tmp")) / "selfsup-staging")
    limit = os.environ.get(STAGING_LIMIT_VARIABLE)
    local = stage_dataset(str(config.data.path), cache, max_bytes=limit)
    values = config_to_dict(config)
    values["data"]["path"] = str(local)
    return config_from_dict(values)


def _train_worker(loop_config: dict) -> None:
    """Runs in every Ray Train worker, after Ray has set up the process group."""
    output = Path(loop_config["output"])
    output.mkdir(parents=True, exist_ok=True)
    config = stage_if_remote(config_from_dict(loop_config["config"]))
    restored = restore_from_ray(output)
    if restored is not None:
        values = config_to_dict(config)
        values["trainer"]["resume"] = str(restored)
        config = config_from_dict(values)
    reporter = RayReporter(output, ray.train.get_context().get_world_rank())  # Ray
    summary = train(config, output, report=reporter)
    reporter.finish(summary)


def run_training(config: Config, output: str | Path, *, workers: int = 1, use_gpu: bool = False,
                 gpus_per_worker: float | None = None, cpus_per_worker: float = 1,
                 address: str | None = None, max_failures: int = 0, storage: str | None = None,
                 spread: bool = False) -> dict:
    """Train on `workers` Ray workers; returns the last reported metrics.

    `storage`: where Ray keeps the reported checkpoints (a shared folder or a URI such as
    `s3://bucket/runs`); by default `OUTPUT/ray`. `spread`: one worker per node where possible.
    """
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    save_config(config, output / "config.yaml")
    ensure_ray(address, num_cpus=workers * cpus_per_worker)
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus_per_worker or 1
    environment = dict(WORKER_ENVIRONMENT)
    environment.update({key: value for key, value in os.environ.items() if key.startswith("SELFSUP_")})
    trainer = TorchTrainer(  # Ray: the whole distributed set-up
        _train_worker,
        train_loop_config={"config": config_to_dict(config), "output": str(output)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources,
                                     placement_strategy="SPREAD" if spread else "PACK"),
        run_config=RunConfig(name=output.name if storage else "ray", storage_path=storage or str(output),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=config.trainer.keep_checkpoints),
                             worker_runtime_env={"env_vars": environment}),
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    summary = output / "metrics.json"
    if summary.exists():  # written by rank 0: present when rank 0 ran on this node or a shared disk
        metrics = {**json.loads(summary.read_text()), **metrics}
    return metrics
