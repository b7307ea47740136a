"""Local Ray instances side by side: each run starts its own, Ray's own actors find the right one, and
a killed driver leaves none of its Ray's processes behind (`selfsup.cluster.reaper`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "model.backbone=resnet18", "--set", "data.image_size=32", "--set", "data.batch_size=8",
        "--set", "method.projection_hidden_dim=64", "--set", "data.num_threads=1", "--set", "optim.warmup_epochs=0",
        "--set", "trainer.log_every=1"]
HOLD_RAY = ("import sys, time\n"
            "from selfsup.cluster.local_ray import ensure_ray\n"
            "ensure_ray(num_cpus=1, dashboard=False)\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")


def owned_by(pid: int) -> list[int]:
    """The processes of the local Ray that process `pid` started (its SELFSUP_RAY_OWNER marker)."""
    prefix = f"SELFSUP_RAY_OWNER={pid}-".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if any(item.startswith(prefix) for item in (entry / "environ").read_bytes().split(b"\0")):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_a_killed_driver_leaves_no_ray_process_behind():
    driver = subprocess.Popen([sys.executable, "-c", HOLD_RAY], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "ready"
        assert len(owned_by(driver.pid)) >= 3  # GCS, raylet, agents, workers
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 15  # Ray's own agents linger for a minute or more without the reaper
        while owned_by(driver.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert owned_by(driver.pid) == []
    finally:
        driver.kill()


@pytest.mark.slow
def test_two_runs_on_one_machine_each_start_their_own_ray(demo_shards, tmp_path):
    """Ray Train's placement-group cleaner looks its cluster up with address "auto", which raised
    "Found multiple active Ray instances" in both runs while two local Rays were up."""
    def start(name: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "selfsup", "train", "--config", "simclr", "--data", str(demo_shards),
                   "--output", str(tmp_path / name), "--set", "trainer.max_steps=20", *TINY]
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first = start("first")
    time.sleep(5)
    second = start("second")
    outputs = [run.communicate(timeout=600)[0] for run in (first, second)]
    for run, output in zip((first, second), outputs):
        assert run.returncode == 0, output[-3000:]
        assert "trained 20 steps" in output
        assert "multiple active Ray instances" not in output and "Traceback" not in output, output[-3000:]
