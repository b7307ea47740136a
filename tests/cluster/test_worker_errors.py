"""How a failed Ray Train run leaves the driver (`selfsup train --workers` and each multi-worker Tune
trial): the lowest rank's reported error as itself, anything else as Ray's own error. Ray's real
`WorkerGroupError` is built here; no cluster is started. The end-to-end runs are in test_multinode.py
(a diverging `selfsup train`) and test_tune.py (failed trials named)."""

from __future__ import annotations

import pytest
from ray.train import WorkerGroupError

from selfsup.cluster.train_job import raising_reported_worker_errors
from selfsup.errors import ConfigError
from selfsup.errors import NonFiniteLossError


def test_the_lowest_reporting_rank_error_leaves_as_itself():
    diverged = NonFiniteLossError("non-finite loss at step 3: loss=nan")
    failures = {2: ConfigError("rank 2's error"), 1: diverged, 0: RuntimeError("rank 0 lost its peer")}
    with pytest.raises(NonFiniteLossError) as raised:
        with raising_reported_worker_errors():
            raise WorkerGroupError("3 workers failed", failures)
    assert raised.value is diverged  # rank 1's, not rank 2's: rank 0's RuntimeError is not a reported kind
    assert isinstance(raised.value.__cause__, WorkerGroupError)  # Ray's report of every rank stays chained


def test_other_failures_leave_unchanged():
    failures = {0: RuntimeError("segfault in a worker"), 1: MemoryError()}
    with pytest.raises(WorkerGroupError) as raised:
        with raising_reported_worker_errors():
            raise WorkerGroupError("2 workers failed", failures)
    assert raised.value.worker_failures is failures
    with pytest.raises(KeyError):  # not a Ray Train failure at all
        with raising_reported_worker_errors():
            raise KeyError("unrelated")
    with raising_reported_worker_errors():  # nothing raised: nothing changes
        pass
