"""`selfsup train` with the dataset and Ray's storage in an S3 bucket (an S3 server on loopback):
the worker stages the shards onto local disk within the space limit, and rank 0's checkpoints
land in the bucket."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.s3_server import loopback_s3

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "model.backbone=resnet18", "--set", "data.image_size=32", "--set", "data.batch_size=8",
        "--set", "method.projection_hidden_dim=64", "--set", "trainer.log_every=1",
        "--set", "optim.warmup_epochs=0", "--set", "data.shuffle_buffer=16", "--set", "data.num_threads=1"]


@pytest.mark.slow
def test_train_from_s3_with_checkpoints_in_s3(demo_shards, tmp_path):
    with loopback_s3() as s3:
        s3.upload(demo_shards, "datasets", "shapes")
        s3.create_bucket("runs")
        staging = tmp_path / "staging"
        environment = {**os.environ, "SELFSUP_STAGING_DIR": str(staging), "SELFSUP_STAGING_LIMIT": "5MB"}
        result = subprocess.run(
            [sys.executable, "-m", "cluster.cli", "train", "--config", "configs/simclr.yaml",
             "--data", s3.uri("datasets", "shapes"), "--storage", s3.uri("runs", "simclr"),
             "--output", str(tmp_path / "run"), "--set", "trainer.max_steps=2",
             "--set", "trainer.checkpoint_every=2", *TINY],
            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "trained 2 steps" in result.stdout

        (local,) = [path for path in staging.iterdir() if path.is_dir()]  # the worker's staged copy
        for original in demo_shards.iterdir():
            assert (local / original.name).read_bytes() == original.read_bytes(), original.name
        assert sum(path.stat().st_size for path in local.rglob("*") if path.is_file()) <= 5_000_000

        stored = s3.list_files("runs", "simclr")  # Ray's storage: the run's state and the checkpoint
        assert "run/step-00000002/state.pt" in stored, stored
        local_state = torch.load(tmp_path / "run" / "checkpoints" / "step-00000002" / "state.pt",
                                 weights_only=True)
        assert local_state["config"]["data"]["path"] == str(local)
        assert s3.read_bytes("runs", "simclr/run/step-00000002/state.pt") == \
            (tmp_path / "run" / "checkpoints" / "step-00000002" / "state.pt").read_bytes()
