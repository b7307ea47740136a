"""Two writers saving checkpoints into one folder at once (real processes): every save succeeds,
neither removes the other's temporary entries, and a save removes only the leftovers of writers
that are gone (its own, a dead process's, an idle one of another host)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from selfsup.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from selfsup.trainer.leftovers import UNOWNED_STALE_SECONDS, temporary_name, this_host, writer_of

ROOT = Path(__file__).resolve().parents[2]
SAVES = 40

# Saves steps 1..SAVES into a folder, each a 1 MB state, after the parent says "go" (so that both
# writers save at the same time); prints the saves that failed, as JSON.
WRITER = f"""
import json, sys, torch
from pathlib import Path
from selfsup.trainer.checkpoint import save_checkpoint
folder, writer = Path(sys.argv[1]), int(sys.argv[2])
weights = torch.full((250_000,), float(writer))
print("ready", flush=True)
sys.stdin.readline()
failures = []
for step in range(1, {SAVES} + 1):
    try:
        save_checkpoint(folder, step, {{"step": step, "writer": writer, "weights": weights}}, keep_last=2)
    except Exception as error:
        failures.append(f"step {{step}}: {{type(error).__name__}}: {{error}}")
print(json.dumps(failures), flush=True)
"""


def test_two_processes_saving_into_one_folder_at_once_all_succeed(tmp_path):
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(index)], cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for index in (1, 2)]
    for writer in writers:
        assert writer.stdout.readline().strip() == "ready"
    for writer in writers:
        writer.stdin.write("go\n")
        writer.stdin.flush()
    outputs = [writer.communicate(timeout=300)[0] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], outputs
    assert [json.loads(output.strip().splitlines()[-1]) for output in outputs] == [[], []]
    # what is left is complete: the last step (by one writer or the other), loadable, no temporaries
    newest = latest_checkpoint(tmp_path)
    state = load_checkpoint(newest)
    assert newest.name == f"step-{SAVES:08d}" and state["step"] == SAVES
    assert torch.equal(state["weights"], torch.full((250_000,), float(state["writer"])))
    assert not list(tmp_path.glob(".tmp-*"))
    for step_folder in tmp_path.glob("step-*"):
        assert load_checkpoint(step_folder)["step"] == int(step_folder.name[5:])


def _leftover(folder: Path, name: str, age_seconds: float = 0.0) -> Path:
    entry = folder / name
    entry.mkdir()
    (entry / "state.pt").write_bytes(b"half a file")
    if age_seconds:
        past = time.time() - age_seconds
        for path in (entry / "state.pt", entry):
            os.utime(path, (past, past))
    return entry


def test_a_save_removes_only_the_leftovers_of_writers_that_are_gone(tmp_path):
    ended = subprocess.Popen(["true"])
    ended.wait()
    running = subprocess.Popen(["sleep", "120"])
    try:
        host = this_host()
        old = UNOWNED_STALE_SECONDS + 60
        own = _leftover(tmp_path, temporary_name("step-00000001"))
        dead = _leftover(tmp_path, f".tmp-{ended.pid}@{host}~step-00000002-0a", age_seconds=5)
        live = _leftover(tmp_path, f".tmp-{running.pid}@{host}~step-00000003-0b", age_seconds=old)
        elsewhere_busy = _leftover(tmp_path, f".tmp-{running.pid}@another-node~step-00000004-0c")
        elsewhere_idle = _leftover(tmp_path, f".tmp-{running.pid}@another-node~step-00000005-0d", age_seconds=old)
        unnamed_busy = _leftover(tmp_path, ".tmp-step-00000006-0e")
        unnamed_idle = _leftover(tmp_path, ".tmp-step-00000007-0f", age_seconds=old)
        assert writer_of(own.name) == (os.getpid(), host) and writer_of(unnamed_idle.name) is None

        save_checkpoint(tmp_path, 10, {"step": 10})
        assert not own.exists() and not dead.exists() and not elsewhere_idle.exists() and not unnamed_idle.exists()
        assert live.exists() and elsewhere_busy.exists() and unnamed_busy.exists()
        assert (live / "state.pt").read_bytes() == b"half a file"
        assert latest_checkpoint(tmp_path) == tmp_path / "step-00000010"
    finally:
        running.kill()
        running.wait()
    save_checkpoint(tmp_path, 11, {"step": 11})  # its writer gone now, the live one's leftover goes too
    assert not live.exists()
