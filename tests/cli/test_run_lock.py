"""One writer per run folder: `selfsup train` holds RUN's lock while it runs (real processes, in
this process with `--workers 0`). A second `selfsup train` into RUN exits 2 at once with one line
naming the first (host, pid, since), as does `selfsup.train` called in this process; SIGTERM
still stops the first cleanly and frees RUN; a lock left by a SIGKILLed trainer is taken over,
with one line naming it. The Ray path (the driver holds the lock while its workers write) is
checked in tests/cluster/test_ray_preemption.py, `selfsup tune` in tests/cluster/test_tune.py."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import selfsup
from selfsup.cli.main import main
from selfsup.errors import FolderLockedError
from selfsup.locks import LOCK_FILE, lock_holder

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "model.backbone=resnet18", "--set", "data.image_size=32", "--set", "data.batch_size=8",
        "--set", "method.projection_hidden_dim=64", "--set", "trainer.log_every=1", "--set", "data.num_threads=1",
        "--set", "optim.warmup_epochs=0", "--set", "trainer.checkpoint_every=1000"]
FOREVER = 100_000  # steps: a run that only a signal ends


def train_arguments(data: Path, run: Path, max_steps: int) -> list[str]:
    return ["train", "--config", "configs/simclr.yaml", "--data", str(data), "--output", str(run), "--workers", "0",
            *TINY, "--set", f"trainer.max_steps={max_steps}"]


def start_training(data: Path, run: Path, log: Path) -> subprocess.Popen:
    """`selfsup train --workers 0` in a process of its own, once it has trained a step."""
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "selfsup", *train_arguments(data, run, FOREVER)],
                                   cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    losses = run / "losses.jsonl"
    while time.monotonic() < deadline and process.poll() is None:
        if losses.exists() and losses.read_text().count("\n") >= 1:
            return process
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"the first run did not start training: {log.read_text()[-3000:]}")


@pytest.fixture
def in_this_process(capsys, monkeypatch):
    """Run `selfsup ARGS...` in this process from the repository root: (status, stdout, stderr)."""
    monkeypatch.chdir(ROOT)

    def run(*arguments: str):
        status = main(list(arguments))
        captured = capsys.readouterr()
        return status, captured.out, captured.err
    return run


@pytest.mark.slow
def test_a_second_train_into_a_busy_run_folder_exits_at_once_naming_the_first(demo_shards, tmp_path,
                                                                                in_this_process):
    run = tmp_path / "run"
    first = start_training(demo_shards, run, tmp_path / "first.log")
    try:
        holder = lock_holder(run)
        assert (holder.purpose, holder.pid, holder.host) == ("selfsup train", first.pid, socket.gethostname())
        config_before = (run / "config.yaml").read_text()

        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "selfsup", *train_arguments(demo_shards, run, 3)], cwd=ROOT,
                                capture_output=True, text=True, timeout=240)
        assert second.returncode == 2, second.stderr[-3000:]
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith(f"selfsup: error: {run.resolve()}: in use by selfsup train, pid {first.pid} on "
                               f"{socket.gethostname()}, since {holder.since}; wait for it to finish or stop it")
        assert second.stdout == "" and time.monotonic() - started < 120

        with pytest.raises(FolderLockedError, match=f"in use by selfsup train, pid {first.pid} on "):
            selfsup.train("configs/simclr.yaml", run, data=demo_shards, overrides=[a for a in TINY if a != "--set"])
        status, _, error = in_this_process(*train_arguments(demo_shards, run, 3))
        assert status == 2 and error.startswith(f"selfsup: error: {run.resolve()}: in use by selfsup train")
        assert first.poll() is None and (run / "config.yaml").read_text() == config_before  # left alone
        assert lock_holder(run).pid == first.pid

        first.send_signal(signal.SIGTERM)  # preempted: it checkpoints, stops and lets go of RUN
        assert first.wait(timeout=120) == 128 + signal.SIGTERM, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert not (run / LOCK_FILE).exists()
    stopped = int((tmp_path / "first.log").read_text().split("trained ")[1].split(" steps")[0])
    status, output, error = in_this_process(*train_arguments(demo_shards, run, stopped + 2))
    assert status == 0, error[-3000:]
    assert f"trained {stopped + 2} steps" in output and f"resuming from step {stopped}" in output
    assert not (run / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_lock_left_by_a_killed_train_is_taken_over(demo_shards, tmp_path, in_this_process):
    run = tmp_path / "run"
    killed = start_training(demo_shards, run, tmp_path / "killed.log")
    since = lock_holder(run).since
    killed.kill()
    killed.wait(timeout=60)
    assert lock_holder(run).pid == killed.pid  # its record stays behind; the kernel let go of the lock

    status, output, error = in_this_process(*train_arguments(demo_shards, run, 2))
    assert status == 0, error[-3000:]
    assert f"selfsup: {run.resolve()}: taking over the lock of selfsup train, pid {killed.pid} on " \
           f"{socket.gethostname()}, since {since} (no longer running)" in error.splitlines()
    assert "trained 2 steps" in output and not (run / LOCK_FILE).exists()
