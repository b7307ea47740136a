"""`selfsup submit` and `selfsup jobs` against a real Ray head on loopback (`ray start --head
--block` in its own process group, stopped at the end): a tiny training job runs to the end with
its logs streamed back; a long one is listed, its logs read, and stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"
TINY = ["--set", "model.backbone=resnet18", "--set", "data.image_size=32", "--set", "data.batch_size=8",
        "--set", "method.projection_hidden_dim=64", "--set", "trainer.log_every=1",
        "--set", "optim.warmup_epochs=0", "--set", "data.shuffle_buffer=16", "--set", "data.num_threads=1"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ray_head():
    """A Ray head whose every service (and the dashboard) listens on 127.0.0.1 only."""
    temporary = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: Ray's socket paths are long
    dashboard = free_port()
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    environment.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", "--num-cpus=2", f"--temp-dir={temporary}",
         "--disable-usage-stats"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2).read()
                break
            except urllib.error.HTTPError:  # an answer (401 without Ray's auth token): the dashboard is up
                break
            except OSError:
                if time.monotonic() > deadline or head.poll() is not None:
                    raise RuntimeError("the Ray head did not start")
                time.sleep(1)
        yield address, environment
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=5)  # `ray start --block` often outlives a SIGTERM: the group's SIGKILL ends it
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # what is left of the group this test started
        except ProcessLookupError:
            pass
        shutil.rmtree(temporary, ignore_errors=True)


def selfsup(environment: dict, *arguments: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfsup", *arguments], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_submit_train_then_list_logs_stop(ray_head, demo_shards, tmp_path):
    address, environment = ray_head
    run = tmp_path / "run"
    done = selfsup(environment, "submit", "--address", address, "--python", sys.executable, "--",
                   "train", "--config", "configs/simclr.yaml", "--data", str(demo_shards), "--output", str(run),
                   "--set", "trainer.max_steps=2", "--set", "trainer.checkpoint_every=2", *TINY)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "submitted job" in done.stdout and "trained 2 steps" in done.stdout  # streamed logs
    assert "SUCCEEDED" in done.stdout
    assert json.loads((run / "metrics.json").read_text())["step"] == 2

    long = selfsup(environment, "submit", "--address", address, "--python", sys.executable, "--no-wait", "--",
                   "train", "--config", "configs/simclr.yaml", "--data", str(demo_shards),
                   "--output", str(tmp_path / "long"), "--set", "trainer.max_steps=100000", *TINY)
    assert long.returncode == 0, long.stderr[-3000:]
    job_id = long.stdout.split("submitted job ", 1)[1].split(":", 1)[0]

    listed = selfsup(environment, "jobs", "list", "--address", address)
    assert listed.returncode == 0 and job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    deadline = time.monotonic() + 180
    while not (logs := selfsup(environment, "jobs", "logs", job_id, "--address", address)).stdout.strip():
        assert time.monotonic() < deadline, logs.stdout[-3000:] + logs.stderr[-3000:]
        time.sleep(3)
    stopped = selfsup(environment, "jobs", "stop", job_id, "--address", address)
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout
    deadline = time.monotonic() + 60
    while "STOPPED" not in [line for line in selfsup(environment, "jobs", "list", "--address",
                                                       address).stdout.splitlines() if job_id in line][0]:
        assert time.monotonic() < deadline
        time.sleep(2)
