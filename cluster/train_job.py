"""Pretraining through Ray Train: one DDP rank per worker, the plain training function in each.

The Ray-specific lines are the TorchTrainer set-up below and `ray.train.report` in the worker;
everything else is `trainer.loop.train`, which runs unchanged outside Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import ray.train
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from cluster.local_ray import ensure_ray
from trainer.config import Config, config_from_dict, config_to_dict, save_config
from trainer.loop import train


# Ray Train would otherwise both log and echo every print() of the workers (each line twice).
WORKER_ENVIRONMENT = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def _train_worker(loop_config: dict) -> None:
    """Runs in every Ray Train worker, after Ray has set up the process group."""
    config = config_from_dict(loop_config["config"])
    train(config, loop_config["output"], report=ray.train.report)  # Ray: metrics to the driver


def run_training(config: Config, output: str | Path, *, workers: int = 1, use_gpu: bool = False,
                 cpus_per_worker: float = 1, address: str | None = None, max_failures: int = 0) -> dict:
    """Train on `workers` Ray workers; returns the last reported metrics."""
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    save_config(config, output / "config.yaml")
    ensure_ray(address, num_cpus=workers * cpus_per_worker)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": config_to_dict(config), "output": str(output)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name="ray", storage_path=str(output),
                             failure_config=FailureConfig(max_failures=max_failures),
                             worker_runtime_env={"env_vars": WORKER_ENVIRONMENT}),
    )
    trainer.fit()
    summary = output / "metrics.json"
    return json.loads(summary.read_text()) if summary.exists() else {}
