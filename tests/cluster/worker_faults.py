"""Faults the tests inject into Ray Train workers, through the generic SELFSUP_WORKER_SETUP_HOOK of
`cluster.train_job` (a function each worker calls before it trains):

    SELFSUP_WORKER_SETUP_HOOK=tests.cluster.worker_faults.kill_rank_at_step

with SELFSUP_TEST_KILL_AT_STEP, SELFSUP_TEST_KILL_RANK and SELFSUP_TEST_KILL_MARKER set (every
SELFSUP_* variable of the driver reaches the workers). Nothing in the package knows of this module.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

HOOK = f"{__name__}.kill_rank_at_step"
KILL_AT_STEP_VARIABLE = "SELFSUP_TEST_KILL_AT_STEP"
KILL_RANK_VARIABLE = "SELFSUP_TEST_KILL_RANK"
KILL_MARKER_VARIABLE = "SELFSUP_TEST_KILL_MARKER"
SETUP_MARKER_VARIABLE = "SELFSUP_TEST_SETUP_MARKER"


def kill_environment(step: int, rank: int, marker: Path) -> dict[str, str]:
    """The variables that make the worker of `rank` kill itself as it reports `step`, once."""
    return {"SELFSUP_WORKER_SETUP_HOOK": HOOK, KILL_AT_STEP_VARIABLE: str(step), KILL_RANK_VARIABLE: str(rank),
            KILL_MARKER_VARIABLE: str(marker)}


def kill_rank_at_step() -> None:
    """In this worker process: wrap `ray.train.report` so that the worker of rank KILL_RANK kills its
    own process (SIGKILL, no clean-up) when it reports step KILL_AT_STEP to Ray, once: it first writes
    its process id to KILL_MARKER, and a worker that finds the marker there reports as usual."""
    import ray.train

    step, rank = int(os.environ[KILL_AT_STEP_VARIABLE]), int(os.environ[KILL_RANK_VARIABLE])
    marker = Path(os.environ[KILL_MARKER_VARIABLE])
    report = ray.train.report

    def report_or_die(metrics, *args, **kwargs):
        if (int(metrics.get("step", 0)) == step and ray.train.get_context().get_world_rank() == rank
                and not marker.exists()):
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return report(metrics, *args, **kwargs)

    ray.train.report = report_or_die


def mark_set_up() -> None:
    """Append this process's id to the file SELFSUP_TEST_SETUP_MARKER names: the hook was called."""
    with open(os.environ[SETUP_MARKER_VARIABLE], "a", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
