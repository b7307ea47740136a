"""`selfsup train --workers 2` as a user runs it on a real local Ray (2 DDP ranks over gloo, real
shards), preempted: SIGTERM stops both ranks at the same step, rank 0 writes a checkpoint (which Ray
gets at once), the command exits 143, and the same command run again continues from that
checkpoint to the end. The driver holds the run folder's lock throughout, while its workers
write into the folder, and lets go of it when preempted. The run folder then holds its config,
the checkpoints and TensorBoard scalars, and `selfsup eval knn` evaluates it. While it runs, nothing it started listens beyond
loopback (Ray's services, the DDP rendezvous, gloo)."""

from __future__ import annotations

import ipaddress
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from selfsup.locks import LOCK_FILE, lock_holder
from selfsup.trainer.checkpoint import latest_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TOTAL_STEPS = 10
STEPS_PER_EPOCH = 120 // (8 * 2)  # 120 train samples, batch 8 per rank, 2 ranks
TINY = ["--set", "model.backbone=resnet18", "--set", "data.image_size=32", "--set", "data.batch_size=8",
        "--set", "method.projection_hidden_dim=64", "--set", "trainer.log_every=1", "--set", "data.num_threads=1",
        "--set", "optim.warmup_epochs=0", "--set", "data.shuffle_buffer=16"]


def _descendants(root: int) -> set[int]:
    """`root` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, pending = set(), [root]
    while pending:
        pid = pending.pop()
        found.add(pid)
        pending.extend(children.get(pid, []))
    return found


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:  # "*": every interface
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _listening_beyond_loopback(root: int) -> list[str]:
    """`ss -ltnp` lines of TCP listeners owned by `root`'s process tree and not bound to loopback."""
    tree = _descendants(root)
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    exposed = []
    for line in lines:
        fields = line.split()
        owners = {int(part.split(",")[0]) for part in line.split("pid=")[1:]}
        if owners & tree and not _is_loopback(fields[3].rsplit(":", 1)[0]):
            exposed.append(line)
    return exposed


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "reports.jsonl").read_text().splitlines()]


def _reported_steps(run: Path) -> int:
    path = run / "reports.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_sigterm_to_the_driver_checkpoints_every_rank_at_one_step_and_the_same_command_resumes(
        demo_shards, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "selfsup", "train", "--config", "configs/simclr.yaml", "--data",
               str(demo_shards), "--output", str(run), "--workers", "2", "--set", f"trainer.max_steps={TOTAL_STEPS}",
               "--set", "trainer.checkpoint_every=1000", *TINY]
    log = tmp_path / "first.log"
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None and _reported_steps(run) < 2:
            time.sleep(0.2)
        assert process.poll() is None, log.read_text()[-4000:]
        # the driver holds the run folder's lock while its Ray workers, other processes, write into it
        holder = lock_holder(run)
        assert holder is not None and (holder.purpose, holder.pid) == ("selfsup train", process.pid)
        assert {record["pid"] for record in _records(run)} - {process.pid}
        exposed = _listening_beyond_loopback(process.pid) if shutil.which("ss") else []
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    first = log.read_text()
    assert process.returncode == 128 + signal.SIGTERM, first[-4000:]  # stopped, not finished
    assert not (run / LOCK_FILE).exists()  # preempted, the driver let go of the run folder
    assert not exposed, exposed
    assert "stopped early (SIGTERM)" in first, first[-4000:]
    stopped = int(first.split("trained ")[1].split(" steps")[0])
    assert 2 <= stopped < TOTAL_STEPS
    assert "Reporting training result" not in first  # Ray's per-report INFO line is silenced

    # one checkpoint, at the stop step, in which both ranks' loaders stand at that same step
    checkpoint = latest_checkpoint(run / "checkpoints")
    assert checkpoint is not None and checkpoint.name == f"step-{stopped:08d}"
    state = torch.load(checkpoint / "state.pt", weights_only=True)
    assert state["step"] == stopped and len(state["ranks"]) == 2
    for rank_state in state["ranks"]:
        position = rank_state["data"]
        assert position["epoch"] * STEPS_PER_EPOCH + position["batches"] == stopped, position
    assert (run / "ray" / checkpoint.name / "state.pt").exists()  # reported to Ray when written
    assert [record["step"] for record in _records(run)] == list(range(1, stopped + 1))

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert f"trained {TOTAL_STEPS} steps" in again.stdout and "stopped early" not in again.stdout
    steps_by_process: dict[int, list[int]] = {}
    for record in _records(run):
        steps_by_process.setdefault(record["pid"], []).append(record["step"])
    before, after = steps_by_process.values()
    assert before == list(range(1, stopped + 1)) and after == list(range(stopped + 1, TOTAL_STEPS + 1))

    # what the finished run leaves for its user, and `selfsup eval knn` on it
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["max_steps"] == TOTAL_STEPS and config["data"]["path"] == str(demo_shards.resolve())
    state = torch.load(run / "checkpoints" / f"step-{TOTAL_STEPS:08d}" / "state.pt", weights_only=True)
    assert state["step"] == TOTAL_STEPS and state["config"]["method"]["name"] == "simclr"
    assert any(key.startswith("backbone.") for key in state["model"])
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert {event.step for event in losses} >= set(range(stopped + 1, TOTAL_STEPS + 1))
    assert all(event.value > 0 for event in losses)
    assert "train/lr" in events.Tags()["scalars"] and "train/images_per_second" in events.Tags()["scalars"]
    assert json.loads((run / "metrics.json").read_text())["step"] == TOTAL_STEPS
    knn = subprocess.run([sys.executable, "-m", "selfsup", "eval", "knn", "--checkpoint", str(run), "--data",
                          str(demo_shards), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert knn.returncode == 0, knn.stderr[-3000:]
    answer = json.loads(knn.stdout.strip().splitlines()[-1])
    assert 0.0 <= answer["top1"] <= 100.0 and answer["query_split"] == "val" and answer["query_samples"] == 40
    recalibrated = subprocess.run([sys.executable, "-m", "selfsup", "eval", "knn", "--checkpoint", str(run),
                                   "--data", str(demo_shards), "--recalibrate-bn", "50", "--json"], cwd=ROOT,
                                  capture_output=True, text=True, timeout=300)
    assert recalibrated.returncode == 0, recalibrated.stderr[-3000:]
    answer = json.loads(recalibrated.stdout.strip().splitlines()[-1])
    assert answer["weights"] == "pretrained, BatchNorm re-estimated on 50 train images"
    assert answer["query_samples"] == 40
