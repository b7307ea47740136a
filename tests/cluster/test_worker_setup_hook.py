"""SELFSUP_WORKER_SETUP_HOOK: the function it names is called (in every Ray Train worker, before
training); a name that cannot be imported is a ConfigError naming the variable. The end-to-end use,
a worker killed mid-run, is test_fault_tolerance.py."""

from __future__ import annotations

import os

import pytest

from selfsup.cluster.train_job import WORKER_SETUP_HOOK_VARIABLE, run_worker_setup_hook
from selfsup.errors import ConfigError
from tests.cluster.worker_faults import SETUP_MARKER_VARIABLE


def test_the_named_function_is_called(tmp_path, monkeypatch):
    marker = tmp_path / "set-up"
    monkeypatch.setenv(SETUP_MARKER_VARIABLE, str(marker))
    monkeypatch.delenv(WORKER_SETUP_HOOK_VARIABLE, raising=False)
    run_worker_setup_hook()  # not set: nothing happens
    assert not marker.exists()
    monkeypatch.setenv(WORKER_SETUP_HOOK_VARIABLE, "tests.cluster.worker_faults.mark_set_up")
    run_worker_setup_hook()
    assert marker.read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("hook, reason", [("tests.cluster.no_such_module.set_up", "cannot import it"),
                                          ("tests.cluster.worker_faults.no_such_function", "cannot import it"),
                                          ("set_up", "cannot import it"),
                                          ("tests.cluster.worker_faults.HOOK", "not a function")])
def test_a_hook_that_cannot_be_called_is_named(hook, reason, monkeypatch):
    monkeypatch.setenv(WORKER_SETUP_HOOK_VARIABLE, hook)
    with pytest.raises(ConfigError, match=rf"^{WORKER_SETUP_HOOK_VARIABLE}={hook}: {reason}"):
        run_worker_setup_hook()
