"""Preemption: SIGTERM (or Ctrl-C) writes a checkpoint and exits cleanly; starting again on the
same output folder continues from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from tests.trainer.training_run import ROOT, OneTorchThread, read_losses, tiny_config
from selfsup.trainer.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.trainer.loop import train
from selfsup.trainer.preemption import StopRequest, handle_stop_signals, poll_for_stop

SCRIPT = """
import sys
from tests.trainer.training_run import tiny_config
from selfsup.trainer.loop import train
summary = train(tiny_config(sys.argv[1], "trainer.max_steps=500"), sys.argv[2])
print("SUMMARY", summary["step"], summary.get("stopped"))
"""


@pytest.mark.slow
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


def test_each_checkpoint_is_handed_over_when_written_and_a_polled_request_stops_the_run(demo_shards, tmp_path):
    """`on_checkpoint` sees every checkpoint (the folder already complete) with its step's metrics;
    a stop asked through `poll_for_stop` (as a Ray worker gets it from its driver) ends the run with
    a checkpoint at the stop step."""
    handed: list[tuple[int, str, bool, dict]] = []

    def on_checkpoint(path, step, metrics):
        handed.append((step, path.name, (path / "state.pt").is_file(), metrics))

    def check():  # "the driver was signalled", once the first checkpoint has been handed over
        return "driver asked" if handed else None

    stop = StopRequest()
    with OneTorchThread(), poll_for_stop(stop, check, every=0.05):
        summary = train(tiny_config(demo_shards, "trainer.max_steps=200", "trainer.checkpoint_every=2"),
                        tmp_path / "run", on_checkpoint=on_checkpoint, stop=stop)
    assert summary["stopped"] == "driver asked" and 2 < summary["step"] < 200
    stopped = summary["step"]
    assert [step for step, *_ in handed] == sorted({*range(2, stopped + 1, 2), stopped})  # every 2nd, and the stop
    for step, name, complete, metrics in handed:
        assert name == f"step-{step:08d}" and complete
        assert metrics["step"] == step and metrics["loss"] > 0 and "lr" in metrics
    assert load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))["step"] == summary["step"]


def test_poll_for_stop_sets_the_request_and_survives_a_failing_check(capsys):
    answers = iter([None, None, "asked"])
    stop = StopRequest()
    with poll_for_stop(stop, lambda: next(answers), every=0.01):
        deadline = time.monotonic() + 5
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)
    assert stop.reason == "asked"

    def broken():
        raise ConnectionError("driver gone")

    stop = StopRequest()
    with poll_for_stop(stop, broken, every=0.01):
        time.sleep(0.1)
    assert not stop.requested and "driver gone" in capsys.readouterr().err


def test_a_stop_request_tells_its_listener_once():
    heard = []
    stop = StopRequest(on_request=heard.append)
    stop.request("SIGTERM")
    stop.request("SIGINT")
    assert stop.reason == "SIGTERM" and heard == ["SIGTERM"]
