"""A worker killed mid-run (SIGKILL) on a local Ray: Ray restarts the worker group and the run
continues from the last checkpoint, with no step lost, none repeated beyond the checkpoint, and the
epoch accounting intact. Ray holds the newest checkpoint written before the kill (each one is
reported when written) and hands it to the restarted workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.s3_server import loopback_s3
from tests.cluster.worker_faults import kill_environment

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "model.backbone=resnet18", "--set", "data.image_size=32", "--set", "data.batch_size=8",
        "--set", "method.projection_hidden_dim=64", "--set", "trainer.log_every=1",
        "--set", "optim.warmup_epochs=0", "--set", "data.shuffle_buffer=16"]
# Killed (in its report of step 5) two steps after a checkpoint: a rank's report of step 4 returns
# only once Ray's controller has taken its report of step 3 (one pending report per worker), and
# step 5's all-reduce needs both ranks past step 4, so Ray has registered the step-3 checkpoint
# before the kill. (Ray copies it to storage at step 3 itself, but registers it at its next poll.)
TOTAL_STEPS, CHECKPOINT_EVERY, KILL_AT = 10, 3, 5


@pytest.mark.slow
def test_killed_worker_resumes_from_checkpoint(demo_shards, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "killed-worker-pid"
    # the kill comes from the test's own worker set-up hook (tests/cluster/worker_faults.py), which the
    # local Ray's workers import from this checkout
    environment = {**os.environ, **kill_environment(KILL_AT, rank=1, marker=marker),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "selfsup", "train", "--config", "configs/simclr.yaml", "--data",
         str(demo_shards), "--output", str(run), "--workers", "2", "--max-failures", "2",
         "--set", f"trainer.max_steps={TOTAL_STEPS}", "--set", f"trainer.checkpoint_every={CHECKPOINT_EVERY}",
         *TINY],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"trained {TOTAL_STEPS} steps" in result.stdout
    killed_pid = int(marker.read_text())  # the hook did kill a worker

    records = [json.loads(line) for line in (run / "reports.jsonl").read_text().splitlines()]
    attempts: dict[int, list[int]] = {}
    for record in records:
        attempts.setdefault(record["pid"], []).append(record["step"])
    first, second = list(attempts.values())  # rank 0's process before and after the restart
    assert killed_pid not in attempts  # rank 1 was killed; rank 0 logs
    # before the kill: every step up to it (rank 0 may or may not have logged the kill step itself)
    assert first[: KILL_AT - 1] == list(range(1, KILL_AT)) and len(first) in (KILL_AT - 1, KILL_AT)
    # after: from the step after the last checkpoint before the kill, to the end, each once
    last_checkpoint = (KILL_AT - 1) // CHECKPOINT_EVERY * CHECKPOINT_EVERY
    assert second == list(range(last_checkpoint + 1, TOTAL_STEPS + 1))
    # the newest checkpoint before the kill is the one Ray gave the restarted workers
    assert f"Ray holds checkpoint step-{last_checkpoint:08d} of this run" in result.stdout, result.stdout[-4000:]

    # the epoch accounting: each step's epoch follows from the step alone, before and after
    steps_per_epoch = 120 // (8 * 2)  # 120 train samples, batch 8 per rank, 2 ranks
    for record in records:
        assert record["epoch"] == (record["step"] - 1) // steps_per_epoch + 1, record
    state = torch.load(run / "checkpoints" / f"step-{TOTAL_STEPS:08d}" / "state.pt", weights_only=True)
    assert state["step"] == TOTAL_STEPS
    for rank_state in state.get("ranks", []):  # checkpoint format 2: every rank's loader position
        position = rank_state["data"]
        assert position["epoch"] * steps_per_epoch + position["batches"] == TOTAL_STEPS, position

    # Ray holds the reported checkpoints too (what a restart on another node downloads)
    reported = sorted(path.name for path in (run / "ray").iterdir() if path.name.startswith("step-"))
    assert f"step-{TOTAL_STEPS:08d}" in reported


@pytest.mark.slow
def test_run_continues_from_checkpoint_in_s3_storage(demo_shards, tmp_path):
    """Dataset and Ray's storage in S3 (an S3 server on loopback): the worker stages the shards onto
    local disk within the space limit and rank 0's checkpoints land in the bucket. Then a restart
    on a machine without the run's local files (another output folder, same name and --storage):
    the checkpoint comes from the bucket and training continues after it."""
    with loopback_s3() as s3:
        s3.upload(demo_shards, "datasets", "shapes")
        s3.create_bucket("runs")
        staging = tmp_path / "staging"
        environment = {**os.environ, "SELFSUP_STAGING_DIR": str(staging), "SELFSUP_STAGING_LIMIT": "5MB"}
        common = ["train", "--config", "configs/simclr.yaml", "--data", s3.uri("datasets", "shapes"),
                  "--storage", s3.uri("runs", "simclr"), "--set", "trainer.checkpoint_every=2", *TINY]
        first_run = tmp_path / "a" / "run"
        first = subprocess.run([sys.executable, "-m", "selfsup", *common, "--output", str(first_run),
                                "--set", "trainer.max_steps=4"], cwd=ROOT, env=environment,
                               capture_output=True, text=True, timeout=900)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        (local,) = [path for path in staging.iterdir() if path.is_dir()]  # the worker's staged copy
        for original in demo_shards.iterdir():  # one worker reads all of train, none of val
            if original.name.startswith("val-") and original.suffix == ".tar":
                assert (local / original.name).is_symlink(), original.name  # its placeholder: not staged
            else:
                assert (local / original.name).read_bytes() == original.read_bytes(), original.name
        assert sum(path.stat().st_size for path in local.rglob("*") if path.is_file()) <= 5_000_000
        state = first_run / "checkpoints" / "step-00000004" / "state.pt"
        assert torch.load(state, weights_only=True)["config"]["data"]["path"] == str(local)
        assert "run/step-00000004/state.pt" in s3.list_files("runs", "simclr")
        assert s3.read_bytes("runs", "simclr/run/step-00000004/state.pt") == state.read_bytes()

        second_run = tmp_path / "b" / "run"
        second = subprocess.run([sys.executable, "-m", "selfsup", *common, "--output", str(second_run),
                                 "--set", "trainer.max_steps=6"], cwd=ROOT, env=environment,
                                capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "trained 6 steps" in second.stdout
    assert (second_run / "restored" / "step-00000004" / "state.pt").exists()
    steps = [json.loads(line)["step"] for line in (second_run / "reports.jsonl").read_text().splitlines()]
    assert steps == [5, 6]
