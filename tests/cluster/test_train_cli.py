"""`selfsup train` and `selfsup eval knn` as a user runs them: a real local Ray, 2 DDP workers over
gloo, real shards; the run folder gets its config, a checkpoint and TensorBoard scalars."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "model.backbone=resnet18", "--set", "data.image_size=32", "--set", "data.batch_size=16",
        "--set", "method.projection_hidden_dim=64", "--set", "trainer.log_every=1",
        "--set", "optim.warmup_epochs=0"]


def selfsup(*arguments: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *arguments], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_train_two_workers_then_knn(demo_shards, tmp_path):
    run = tmp_path / "run"
    result = selfsup("train", "--config", "configs/simclr.yaml", "--data", str(demo_shards), "--output", str(run),
                     "--workers", "2", "--set", "trainer.max_steps=4", "--set", "trainer.checkpoint_every=2", *TINY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "trained 4 steps" in result.stdout

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["max_steps"] == 4 and config["data"]["path"] == str(demo_shards.resolve())
    steps = sorted(path.name for path in (run / "checkpoints").glob("step-*"))
    assert steps == ["step-00000002", "step-00000004"]
    state = torch.load(run / "checkpoints" / "step-00000004" / "state.pt", weights_only=True)
    assert state["step"] == 4 and state["config"]["method"]["name"] == "simclr"
    assert any(key.startswith("backbone.") for key in state["model"])

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [event.step for event in losses] == [1, 2, 3, 4]
    assert all(event.value > 0 for event in losses)
    assert "train/lr" in events.Tags()["scalars"] and "train/images_per_second" in events.Tags()["scalars"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 4

    knn = selfsup("eval", "knn", "--checkpoint", str(run), "--data", str(demo_shards), "--json")
    assert knn.returncode == 0, knn.stderr[-3000:]
    answer = json.loads(knn.stdout.strip().splitlines()[-1])
    assert 0.0 <= answer["top1"] <= 100.0 and answer["query_split"] == "val" and answer["query_samples"] == 40


def test_train_refuses_bad_input_clearly(demo_shards, tmp_path):
    typo = selfsup("train", "--config", "configs/simclr.yaml", "--data", str(demo_shards), "--output",
                   str(tmp_path / "a"), "--set", "optim.lrr=0.1")
    assert typo.returncode == 2
    assert "unknown config key optim.lrr" in typo.stderr and "valid keys in optim" in typo.stderr
    missing = selfsup("train", "--config", "configs/simclr.yaml", "--data", str(tmp_path / "nowhere"),
                      "--output", str(tmp_path / "b"), *TINY)
    assert missing.returncode == 2 and "nowhere" in missing.stderr
    no_checkpoint = selfsup("eval", "knn", "--checkpoint", str(tmp_path / "empty"), "--data", str(demo_shards))
    assert no_checkpoint.returncode == 2 and "no checkpoint" in no_checkpoint.stderr
