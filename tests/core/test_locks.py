"""selfsup.locks: one holder at a time across real processes, the holder named to whoever is
refused, the lock file gone after release, and a lock left by a killed process taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfsup.errors import USER_ERRORS, FolderLockedError
from selfsup.locks import LOCK_FILE, hold_folder_lock, lock_holder

ROOT = Path(__file__).resolve().parents[2]

# Takes the lock, says so on stdout, then holds it until stdin closes (or the process is killed).
# With "child", it first starts a long-lived child process that keeps every inheritable descriptor
# (close_fds=False): the lock's must not be one of them.
HOLDER = """
import subprocess, sys
from selfsup.locks import hold_folder_lock
with hold_folder_lock(sys.argv[1], "test holder"):
    child = None
    if sys.argv[2:] == ["child"]:
        child = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 close_fds=False)
    print("held", child.pid if child else 0, flush=True)
    sys.stdin.read()
"""

# Increments a counter file 25 times, each time under the lock (read, pause, write back), taking
# the lock again and again: lost updates would show two holders at once.
COUNTER = """
import sys, time
from pathlib import Path
from selfsup.errors import FolderLockedError
from selfsup.locks import hold_folder_lock
folder = Path(sys.argv[1])
done = 0
while done < 25:
    try:
        with hold_folder_lock(folder, "counter"):
            value = int((folder / "count").read_text())
            time.sleep(0.002)
            (folder / "count").write_text(str(value + 1))
        done += 1
    except FolderLockedError:
        time.sleep(0.001)
"""


def start_holder(folder: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    """A process holding FOLDER's lock (and the pid of its child, with "child")."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), *extra], cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline().split()
    assert line[0] == "held", line
    return process, int(line[1])


def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path):
    holder, _ = start_holder(tmp_path)
    try:
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == holder.pid and record["purpose"] == "test holder"
        assert record["host"] == socket.gethostname()
        started = time.monotonic()
        with pytest.raises(FolderLockedError) as refused:
            with hold_folder_lock(tmp_path, "second"):
                pytest.fail("the lock was taken twice")
        assert time.monotonic() - started < 1.0  # at once, no waiting
        message = str(refused.value)
        assert str(tmp_path) in message and f"test holder, pid {holder.pid} on {socket.gethostname()}" in message
        assert refused.value.holder.pid == holder.pid and refused.value.folder == tmp_path
        assert isinstance(refused.value, USER_ERRORS)  # the command line prints one line, exit 2
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid  # record intact
        assert lock_holder(tmp_path).pid == holder.pid
    finally:
        holder.communicate("", timeout=30)  # closing stdin releases it
    assert holder.returncode == 0
    assert not (tmp_path / LOCK_FILE).exists() and lock_holder(tmp_path) is None
    with hold_folder_lock(tmp_path, "third") as lock:
        assert lock.stale_holder is None and lock.holder.pid == os.getpid()
        assert json.loads(lock.path.read_text())["purpose"] == "third"


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    holder, _ = start_holder(tmp_path)
    holder.kill()
    holder.communicate(timeout=30)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid  # left behind
    with hold_folder_lock(tmp_path, "after the crash") as lock:
        assert lock.stale_holder is not None and lock.stale_holder.pid == holder.pid
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_child_of_the_holder_does_not_keep_the_lock(tmp_path):
    holder, child = start_holder(tmp_path, "child")
    try:
        holder.kill()
        holder.communicate(timeout=30)
        assert Path(f"/proc/{child}").exists()  # the child lives on, its parent killed
        with hold_folder_lock(tmp_path, "free again") as lock:
            assert lock.stale_holder.pid == holder.pid
    finally:
        os.kill(child, signal.SIGKILL)


def test_an_exception_releases_the_lock(tmp_path):
    with pytest.raises(KeyError):
        with hold_folder_lock(tmp_path, "failing"):
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []
    with hold_folder_lock(tmp_path, "next"):
        pass


def test_one_holder_at_a_time_across_processes(tmp_path):
    (tmp_path / "count").write_text("0")
    processes = [subprocess.Popen([sys.executable, "-c", COUNTER, str(tmp_path)], cwd=ROOT) for _ in range(3)]
    for process in processes:
        assert process.wait(timeout=120) == 0
    assert (tmp_path / "count").read_text() == "75"
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_folder_that_cannot_hold_the_lock_file_raises_its_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with hold_folder_lock(tmp_path / "missing", "nowhere"):
            pass
