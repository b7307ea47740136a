"""convert under concurrent use and signals, with real processes: a second conversion into the
same folder is refused at once by its lock, a lock left by a killed one is taken over, Ctrl-C ends
the command and its workers even when they are stuck, and a SIGKILL leaves no orphaned worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from selfsup.locks import LOCK_FILE
from selfsup.pipeline.convert import convert

sys.path.insert(0, str(Path(__file__).parent))
from convert_runs import one_error_line, run_convert, start_convert, write_many_images  # noqa: E402
from dataset_checks import check_complete  # noqa: E402


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """See `write_many_images`: (source, relative paths)."""
    source = tmp_path_factory.mktemp("many") / "src"
    return source, write_many_images(source)


def children(pid: int) -> list[int]:
    """Every living descendant of `pid` (from /proc; zombies count as dead)."""
    parents = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat_file.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def is_alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ignores_sigint(pid: int) -> bool:
    """Whether the process ignores SIGINT (its SigIgn mask in /proc), as a started pool worker does."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask, 16) & (1 << (signal.SIGINT - 1)))


def pool_workers(pid: int, count: int, timeout: float = 60) -> list[int]:
    """The pids of the `count` spawned pool workers of process `pid`, once each has run its
    initializer (it ignores SIGINT once it has asked to die with its parent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = []
        for child in children(pid):
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes() and ignores_sigint(child):
                    workers.append(child)
            except OSError:
                pass
        if len(workers) >= count:
            return workers
        time.sleep(0.01)
    pytest.fail(f"no {count} started worker processes under pid {pid}")


def wait_gone(pids: list[int], timeout: float = 20) -> list[int]:
    """The pids still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(is_alive(pid) for pid in pids):
        time.sleep(0.05)
    return [pid for pid in pids if is_alive(pid)]


def kill_all(pids: list[int]) -> None:
    """SIGKILL the processes a test's conversion started, if still alive (after a failure)."""
    for pid in pids:
        if is_alive(pid):
            os.kill(pid, signal.SIGKILL)


def wait_for_lock(output: Path, pid: int, timeout: float = 60) -> None:
    """Return once process `pid` holds the lock of `output`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((output / LOCK_FILE).read_text())["pid"] == pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    pytest.fail(f"the conversion (pid {pid}) never took the lock of {output}")


# --- the output folder's lock ---------------------------------------------------------------------

def test_a_second_convert_into_the_same_folder_is_refused_at_once(many_images, tmp_path):
    source, files = many_images
    output = tmp_path / "out"
    first = start_convert(source, output, "--workers", "1", "--shard-size", "150KB")
    try:
        wait_for_lock(output, first.pid)
        first.send_signal(signal.SIGSTOP)  # holding the lock, half-way: the second one comes now
        for options in ((), ("--seed", "5")):  # the same conversion, and another one
            started = time.monotonic()
            line = one_error_line(run_convert(source, output, "--workers", "1", "--shard-size", "150KB", *options))
            assert time.monotonic() - started < 30
            assert line.startswith(f"selfsup: error: {output}: in use by selfsup convert, pid {first.pid} "
                                   f"on {socket.gethostname()}, since "), line
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=180)
    assert first.returncode == 0, stderr
    check_complete(files, output)
    assert not (output / LOCK_FILE).exists()


def test_a_lock_left_by_a_killed_convert_is_taken_over(many_images, tmp_path):
    source, files = many_images
    output = tmp_path / "out"
    first = start_convert(source, output, "--workers", "1", "--shard-size", "150KB")
    wait_for_lock(output, first.pid)
    deadline = time.monotonic() + 60
    while not list(output.glob("train-*.tar")) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.005)
    first.kill()
    first.communicate(timeout=60)
    assert not (output / "dataset.json").exists(), "finished before it could be killed"
    assert json.loads((output / LOCK_FILE).read_text())["pid"] == first.pid  # left behind
    summary = convert(source, output, shard_size="150KB", workers=1, progress=False)
    assert summary.resumed
    check_complete(files, output)
    assert not (output / LOCK_FILE).exists()


# --- signals and the worker pool ------------------------------------------------------------------

def test_ctrl_c_ends_convert_and_its_workers_even_stuck_ones(many_images, tmp_path):
    source, files = many_images
    output = tmp_path / "out"
    process = start_convert(source, output, "--workers", "2", "--shard-size", "150KB")
    workers = pool_workers(process.pid, 2)
    for worker in workers:  # stuck: they will never finish their chunks by themselves
        os.kill(worker, signal.SIGSTOP)
    descendants = children(process.pid)
    try:
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130 and stderr.strip().splitlines()[-1] == "selfsup: interrupted", stderr
        assert wait_gone(descendants) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        kill_all(descendants)
    assert not (output / "dataset.json").exists()
    assert not list(output.glob("*.partial")) and not (output / LOCK_FILE).exists()
    convert(source, output, shard_size="150KB", workers=2, progress=False)
    check_complete(files, output)


def test_sigkill_of_convert_leaves_no_orphaned_workers(many_images, tmp_path):
    source, _ = many_images
    process = start_convert(source, tmp_path / "out", "--workers", "2", "--shard-size", "150KB")
    workers = pool_workers(process.pid, 2)
    for worker in workers:  # stopped: only the kernel can end them once their parent is gone
        os.kill(worker, signal.SIGSTOP)
    descendants = children(process.pid)
    try:
        process.kill()
        process.wait(timeout=30)  # not communicate(): a surviving worker would hold its pipes open
        assert set(workers) <= set(descendants)
        assert wait_gone(descendants) == []
    finally:
        kill_all(descendants)
        process.stdout.close()
        process.stderr.close()
