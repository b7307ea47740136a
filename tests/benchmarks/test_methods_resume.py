"""Which run folders of the methods benchmark are stopped measurements to continue."""

from __future__ import annotations

import json

from benchmarks.methods import interrupted


def _run(tmp_path, epochs=40, metrics=None):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000075").mkdir(parents=True)
    (run / "checkpoints" / "step-00000075" / "state.pt").write_bytes(b"")
    (run / "budget.json").write_text(json.dumps({"epochs": epochs}))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_killed_or_cleanly_stopped_runs_are_continued_and_finished_ones_are_not(tmp_path):
    assert interrupted(_run(tmp_path / "killed"), 40)  # no summary: killed outright
    assert interrupted(_run(tmp_path / "stopped", metrics={"step": 75, "total_steps": 600}), 40)
    assert not interrupted(_run(tmp_path / "finished", metrics={"step": 600, "total_steps": 600}), 40)
    assert not interrupted(_run(tmp_path / "other budget"), 10)
    assert not interrupted(tmp_path / "nothing here", 40)
