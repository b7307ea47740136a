"""Preemption: SIGTERM (or Ctrl-C) writes a checkpoint and exits cleanly; starting again on the
same output folder continues from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.trainer.training_run import ROOT, OneTorchThread, read_losses, tiny_config
from trainer.checkpoint import latest_checkpoint, load_checkpoint
from trainer.loop import train
from trainer.preemption import StopRequest, handle_stop_signals

SCRIPT = """
import sys
from tests.trainer.training_run import tiny_config
from trainer.loop import train
summary = train(tiny_config(sys.argv[1], "trainer.max_steps=500"), sys.argv[2])
print("SUMMARY", summary["step"], summary.get("stopped"))
"""


def test_sigterm_checkpoints_and_the_next_start_resumes(demo_shards, tmp_path):
    run = tmp_path / "run"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(demo_shards), str(run)], cwd=ROOT,
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if (run / "losses.jsonl").exists() and len((run / "losses.jsonl").read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()[0][-3000:]
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-3000:]
    assert "stopped at step" in output and "SIGTERM" in output
    stopped_step = int(output.split("SUMMARY ")[1].split()[0])
    assert 3 <= stopped_step < 500
    checkpoint = latest_checkpoint(run / "checkpoints")
    assert load_checkpoint(checkpoint)["step"] == stopped_step
    assert max(read_losses(run)) == stopped_step

    with OneTorchThread():
        summary = train(tiny_config(demo_shards, f"trainer.max_steps={stopped_step + 2}"), run)
    assert summary["step"] == stopped_step + 2 and "stopped" not in summary
    assert sorted(read_losses(run)) == list(range(1, stopped_step + 3))


def test_first_signal_requests_a_stop_and_handlers_are_restored():
    stop = StopRequest()
    before = signal.getsignal(signal.SIGINT)
    with handle_stop_signals(stop):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.requested and stop.reason == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is before
