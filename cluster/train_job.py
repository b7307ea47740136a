"""Pretraining through Ray Train: one DDP rank per worker, the plain training function in each.

The Ray-specific lines are the TorchTrainer set-up in `run_training` and the few calls marked
`# Ray:` in the worker; everything else is `trainer.loop.train`, which runs unchanged outside Ray.

In each worker, before training:
- the DDP process group is joined (`cluster.process_group.join_process_group`): rank 0 listens on its node's address
  only (127.0.0.1 on a local Ray), not on every interface as torch's default rendezvous does;
- a dataset given as a URI (`s3://`, `gs://`, `file://`) is staged onto the node's local disk, and
  the config points at the local copy: its small files now, and, epoch by epoch, only the shards
  the node's ranks read (`pipeline.node_staging`; the ranks of a node are found by gathering each
  rank's Ray node), within SELFSUP_STAGING_LIMIT bytes per node; the whole dataset when the
  online kNN monitor, which reads all of it, is on;
- the latest checkpoint Ray holds for this run (after a worker failure, or a run started again
  with the same `--storage`) is downloaded when the output folder has nothing as recent, and
  handed to the trainer as `trainer.resume`.

During training (`RayReporter`) every rank reports to Ray every `trainer.log_every` steps, and
rank 0 appends those metrics to `OUTPUT/reports.jsonl`. Each checkpoint is reported the moment
the trainer has written it (the trainer's `on_checkpoint` hook), with its step's metrics; Ray
copies it to the storage path before the report returns, and its controller registers it at
its next poll of the workers (Ray Train V2 polls every 2 s). The run's last checkpoint (at its
end, or where it stopped) comes with the trainer's summary; checkpoint reports also name each
rank's Ray node. Ray's result holds the metrics of the latest checkpoint report.

Fault tolerance is Ray's: with `max_failures=K`, a dead worker makes Ray restart the whole
worker group, and the training function continues from the latest checkpoint.

Every `SELFSUP_*` variable of the driver's environment reaches the workers. SELFSUP_WORKER_SETUP_HOOK
(`package.module.function`, importable on every node) names a function each worker calls with no
arguments before it joins the process group and trains: for a site's own set-up, and how the
fault-tolerance tests kill a worker mid-run (`tests/cluster/worker_faults.py`).

Preemption: the training function runs in a worker thread, where no signal handler can be
installed, so the driver handles SIGTERM/SIGINT. It sets a flag in a small Ray actor
(`StopFlag`) that every rank polls; the trainer agrees on the stop step across ranks, rank 0
writes a checkpoint (reported to Ray) and the run returns with `"stopped"` in its metrics.
Running the same command again continues from that checkpoint. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import threading
import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path

from selfsup.cluster.local_ray import ensure_ray  # first: it must set up the environment before Ray is imported

import ray
import ray.train
import torch.distributed
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from selfsup.errors import USER_ERRORS, ConfigError
from selfsup.cluster.process_group import PROCESS_GROUP_TIMEOUT_SECONDS, OwnProcessGroup, join_process_group
from selfsup.pipeline.node_staging import NodeStaging, stage_node_parts
from selfsup.pipeline.staging import is_uri, stage_dataset
from selfsup.trainer.checkpoint import latest_checkpoint, step_of
from selfsup.trainer.config import Config, config_from_dict, config_to_dict, save_config
from selfsup.trainer.loop import train
from selfsup.errors import NonFiniteLossError
from selfsup.trainer.preemption import StopRequest, handle_stop_signals, poll_for_stop

# Ray Train would otherwise both log and echo every print() of the workers (each line twice).
WORKER_ENVIRONMENT = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
# Ray Train logs "Reporting training result N: <all metrics> from rank R" at INFO for every report of
# every rank, through a logger named after its source file (so no `ray.train` log level reaches it).
RAY_REPORT_LINE = "Reporting training result"
STOP_POLL_SECONDS = 1.0  # how often each rank asks the driver's StopFlag
REPORTS_FILE = "reports.jsonl"
# Raised in a worker, these reach the caller as themselves (see `reported_worker_error`).
REPORTED_WORKER_ERRORS = (*USER_ERRORS, NonFiniteLossError)
RESTORED_FOLDER = "restored"  # OUTPUT/restored/step-N: a checkpoint downloaded from Ray's storage
STAGING_VARIABLE = "SELFSUP_STAGING_DIR"  # where a node keeps staged shards (default: a temp folder)
STAGING_LIMIT_VARIABLE = "SELFSUP_STAGING_LIMIT"  # bytes of staged data a node may keep, e.g. 200GB
# "package.module.function": called in every Ray Train worker before it trains (`run_worker_setup_hook`),
# a place for a site's own set-up: logging, profilers, fault injection in tests.
WORKER_SETUP_HOOK_VARIABLE = "SELFSUP_WORKER_SETUP_HOOK"


class RayReporter:
    """The `report` and `on_checkpoint` hooks of `trainer.loop.train` inside a Ray Train worker.

    Every rank calls each of them at the same points (`ray.train.report` is collective).
    """

    def __init__(self, output: Path, rank: int):
        self.output = output
        self.rank = rank
        self.worker_nodes = [ray.get_runtime_context().get_node_id()]  # Ray
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.worker_nodes = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(self.worker_nodes, ray.get_runtime_context().get_node_id())  # Ray

    def __call__(self, metrics: dict) -> None:
        """Metrics every `log_every` steps: to OUTPUT/reports.jsonl (rank 0) and to Ray."""
        self._record(metrics)
        ray.train.report(metrics)  # Ray: a barrier across ranks

    def checkpoint(self, path: Path | None, step: int, metrics: dict) -> None:
        """A checkpoint the trainer has just written (its folder on rank 0, None elsewhere), with
        its step's metrics: to OUTPUT/reports.jsonl (rank 0) and to Ray, with the ranks' nodes."""
        self._record(metrics)
        checkpoint, name = None, None
        if path is not None:
            checkpoint, name = ray.train.Checkpoint.from_directory(str(path)), path.name  # Ray
        # Ray: copies rank 0's folder to the storage path before it returns; kept locally as well
        ray.train.report({**metrics, "worker_nodes": self.worker_nodes}, checkpoint=checkpoint,
                         checkpoint_dir_name=name, delete_local_checkpoint_after_upload=False)

    def _record(self, metrics: dict) -> None:
        if self.rank == 0:
            record = {**metrics, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}  # Ray
            with open(self.output / REPORTS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


@ray.remote(num_cpus=0)
class StopFlag:
    """Ray: set by the driver when it is asked to stop (SIGTERM/SIGINT), polled by every rank."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def get_reason(self) -> str | None:
        return self.reason


def restore_from_ray(output: Path, checkpoint: ray.train.Checkpoint | None) -> Path | None:
    """Download Ray's latest checkpoint of this run unless OUTPUT/checkpoints has one as recent."""
    if checkpoint is None:
        return None
    name = Path(checkpoint.path).name
    target = output / RESTORED_FOLDER / name
    if step_of(latest_checkpoint(output / "checkpoints")) >= step_of(target):
        return None
    if not (target / "state.pt").exists():
        temporary = target.with_name(f".tmp-{name}-{uuid.uuid4().hex}")
        checkpoint.to_directory(str(temporary))  # Ray: from the storage path (pyarrow)
        try:
            os.rename(temporary, target)  # another rank on this node may have won the race
        except OSError:
            shutil.rmtree(temporary, ignore_errors=True)
    return target


def ranks_on_this_node(rank: int, world_size: int) -> list[int]:
    """The world ranks whose Ray workers run on this rank's node (collective when world_size > 1)."""
    node = ray.get_runtime_context().get_node_id()  # Ray
    if world_size == 1 or not torch.distributed.is_initialized():
        return [rank]
    nodes = [None] * world_size
    torch.distributed.all_gather_object(nodes, node)
    return [rank for rank, other in enumerate(nodes) if other == node]


def stage_if_remote(config: Config, *, world_size: int = 1,
                    node_ranks: list[int] | None = None) -> tuple[Config, NodeStaging | None]:
    """(`config` with data.path on local disk, the staging session to hand to `train`): a URI's
    dataset staged into this node's cache.

    The shards come per epoch, those that `node_ranks` (this node's world ranks, of `world_size`)
    read (`pipeline.node_staging`): the session, passed as `train(..., staging=session)`, copies
    them as each epoch's loader is built. With the online kNN monitor on, which reads every
    sample of both splits, the whole dataset is staged now instead, and there is no session. A
    local path: `config` as it is, and no session."""
    if not is_uri(str(config.data.path)):
        return config, None
    cache = Path(os.environ.get(STAGING_VARIABLE) or Path(os.environ.get("TMPDIR", "/tmp")) / "selfsup-staging")
    limit = os.environ.get(STAGING_LIMIT_VARIABLE)
    session = None
    if config.eval.online_knn_every_epochs > 0:
        local = stage_dataset(str(config.data.path), cache, max_bytes=limit)
    else:
        local, session = stage_node_parts(str(config.data.path), cache, node_ranks=node_ranks or [0],
                                          world_size=world_size, max_bytes=limit)
    values = config_to_dict(config)
    values["data"]["path"] = str(local)
    return config_from_dict(values), session


class _WithoutReportLines(logging.Filter):
    """Drops Ray Train's per-report INFO line; everything else passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and str(record.msg).startswith(RAY_REPORT_LINE))


def _quiet_report_lines() -> None:
    """Ray: in a worker, its root logging handlers print those lines; filter them there."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, _WithoutReportLines) for existing in handler.filters):
            handler.addFilter(_WithoutReportLines())


def run_worker_setup_hook() -> None:
    """Call the function SELFSUP_WORKER_SETUP_HOOK names ("package.module.function"), if it is set.

    One that cannot be imported is a ConfigError naming the variable and its value."""
    hook = os.environ.get(WORKER_SETUP_HOOK_VARIABLE, "").strip()
    if not hook:
        return
    module_name, _, function_name = hook.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"{WORKER_SETUP_HOOK_VARIABLE}={hook}: cannot import it in this worker ({error}); "
                          "expected package.module.function, importable on every node") from None
    if not callable(function):
        raise ConfigError(f"{WORKER_SETUP_HOOK_VARIABLE}={hook}: not a function")
    function()


def _train_worker(loop_config: dict) -> None:
    """Runs in every Ray Train worker.

    `loop_config`: "config" (a config dict), "output" (the run folder); optionally "stop_flag" (the
    driver's `StopFlag`), "backend" and "timeout_seconds" (of the process group to join when the
    trainer's TorchConfig is `OwnProcessGroup`; with a plain TorchConfig, Ray's group is used).
    """
    _quiet_report_lines()
    run_worker_setup_hook()
    joined = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    if joined:
        backend = loop_config.get("backend") or ("nccl" if torch.cuda.is_available() else "gloo")
        join_process_group(backend, loop_config.get("timeout_seconds", PROCESS_GROUP_TIMEOUT_SECONDS))
    try:
        rank = ray.train.get_context().get_world_rank()  # Ray
        output = Path(loop_config["output"])
        output.mkdir(parents=True, exist_ok=True)
        world_size = ray.train.get_context().get_world_size()  # Ray
        config, staging = stage_if_remote(config_from_dict(loop_config["config"]), world_size=world_size,
                                          node_ranks=ranks_on_this_node(rank, world_size))
        held = ray.train.get_checkpoint()  # Ray: None on a first start
        if held is not None and rank == 0:
            print(f"Ray holds checkpoint {Path(held.path).name} of this run", flush=True)
        restored = restore_from_ray(output, held)
        if restored is not None:
            values = config_to_dict(config)
            values["trainer"]["resume"] = str(restored)
            config = config_from_dict(values)
        reporter = RayReporter(output, rank)
        stop, stop_flag = StopRequest(), loop_config.get("stop_flag")
        polling = nullcontext() if stop_flag is None else poll_for_stop(
            stop, lambda: ray.get(stop_flag.get_reason.remote(), timeout=60), every=STOP_POLL_SECONDS)  # Ray
        with polling:
            train(config, output, report=reporter, on_checkpoint=reporter.checkpoint, stop=stop, staging=staging)
        if joined and torch.distributed.is_initialized():
            torch.distributed.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        if joined and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _fit_keeping_signal_handlers(trainer: TorchTrainer):
    """`trainer.fit()` in a helper thread while this (main) thread waits and handles signals.

    Called in the main thread, fit() replaces the SIGINT handler with Ray's, which aborts the
    run without a checkpoint.
    """
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()  # Ray
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def reported_worker_error(error: BaseException) -> BaseException | None:
    """The exception of the lowest rank that raised one of `REPORTED_WORKER_ERRORS` (a bad dataset
    or config, an unfitting checkpoint, a NaN loss), from Ray's `TrainingFailedError` (its
    `worker_failures`: rank -> exception); None for anything else. The driver re-raises it, so
    `selfsup train` prints its message in one line instead of Ray's report of every rank."""
    failures = getattr(error, "worker_failures", None) or {}
    return next((failures[rank] for rank in sorted(failures)
                 if isinstance(failures[rank], REPORTED_WORKER_ERRORS)), None)


@contextmanager
def raising_reported_worker_errors():
    """Around a Ray Train `fit`: a `TrainingFailedError` whose workers raised one of
    `REPORTED_WORKER_ERRORS` leaves as that error (`reported_worker_error`), as in a one-process
    run; any other failure leaves unchanged. Used by `run_training` and each multi-worker Tune trial."""
    try:
        yield
    except ray.train.TrainingFailedError as error:  # Ray: a NaN loss or bad data in a worker
        reported = reported_worker_error(error)
        if reported is None:
            raise
        raise reported from error


def build_torch_trainer(config: Config, output: Path, *, workers: int, resources: dict, run_name: str,
                        storage_path: str, stop_flag=None, max_failures: int = 0, spread: bool = False,
                        callbacks: tuple = ()) -> TorchTrainer:
    """The Ray Train run of `workers` DDP ranks of `_train_worker` (`selfsup train --workers`, and
    each multi-worker Tune trial): our own loopback-aware process group (NCCL when `resources`
    hold a GPU, gloo otherwise), the workers' environment, Ray's checkpoint storage and retries."""
    environment = dict(WORKER_ENVIRONMENT)
    environment.update({key: value for key, value in os.environ.items() if key.startswith("SELFSUP_")})
    backend = "nccl" if "GPU" in resources else "gloo"
    loop_config = {"config": config_to_dict(config), "output": str(output), "backend": backend,
                   "timeout_seconds": PROCESS_GROUP_TIMEOUT_SECONDS}
    if stop_flag is not None:
        loop_config["stop_flag"] = stop_flag
    return TorchTrainer(  # Ray: the whole distributed set-up
        _train_worker,
        train_loop_config=loop_config,
        torch_config=OwnProcessGroup(backend=backend, timeout_s=PROCESS_GROUP_TIMEOUT_SECONDS),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu="GPU" in resources, resources_per_worker=resources,
                                     placement_strategy="SPREAD" if spread else "PACK"),
        run_config=RunConfig(name=run_name, storage_path=storage_path, callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=config.trainer.keep_checkpoints),
                             worker_runtime_env={"env_vars": environment}),
    )


def run_training(config: Config, output: str | Path, *, workers: int = 1, use_gpu: bool = False,
                 gpus_per_worker: float | None = None, cpus_per_worker: float = 1,
                 address: str | None = None, max_failures: int = 0, storage: str | None = None,
                 spread: bool = False) -> dict:
    """Train on `workers` Ray workers; returns the last reported metrics.

    `storage`: where Ray keeps the reported checkpoints (a shared folder or a URI such as
    `s3://bucket/runs`); by default `OUTPUT/ray`. `spread`: one worker per node where possible.
    SIGTERM or SIGINT during training stop it cleanly: the metrics then hold "stopped" (the
    reason) and "step", and the run's latest checkpoint is at that step.
    """
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    save_config(config, output / "config.yaml")
    ensure_ray(address, num_cpus=workers * cpus_per_worker)
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus_per_worker or 1
    stop_flag = StopFlag.remote()  # Ray
    stop = StopRequest(on_request=lambda reason: stop_flag.request.remote(reason))  # Ray: to every rank
    trainer = build_torch_trainer(
        config, output, workers=workers, resources=resources, run_name=output.name if storage else "ray",
        storage_path=storage or str(output), stop_flag=stop_flag, max_failures=max_failures, spread=spread)
    with handle_stop_signals(stop), raising_reported_worker_errors():
        result = _fit_keeping_signal_handlers(trainer)
    metrics = dict(result.metrics or {})
    summary = output / "metrics.json"
    if summary.exists():  # written by rank 0: present when rank 0 ran on this node or a shared disk
        metrics = {**json.loads(summary.read_text()), **metrics}
    if metrics.get("stopped") and stop.requested:
        # Rank 0 may see the request first through another rank ("stop requested on another
        # rank"); the driver knows the signal itself, and the exit status is derived from it.
        metrics["stopped"] = stop.reason
    return metrics
