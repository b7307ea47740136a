"""The local worker processes that read and check a conversion's images, and how they end.

`prepared_in_order` hands out `prepare_image` results in task order from a pool of spawned
processes. The pool never outlives the command:

- Ctrl-C (SIGINT) is handled by the main process alone (the workers ignore it, so a terminal's
  Ctrl-C, sent to the whole process group, does not kill them mid-chunk with tracebacks); the
  main process then kills every worker, whatever it is doing (even stopped or blocked in a read),
  instead of waiting for their chunks, so the command ends at once.
- A main process that is killed (SIGKILL, the OOM killer) cannot clean up: each worker asks the
  kernel to kill it when its parent dies (Linux `prctl(PR_SET_PDEATHSIG, SIGKILL)`) and checks
  that the parent is still the one that started it, so none is left orphaned.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from selfsup.pipeline.images import prepare_image

Task = tuple[str, str, "int | None"]  # (source root, relative path, max_side)
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent ends (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _start_worker(parent: int) -> None:
    """Pool initializer: die with the parent; Ctrl-C is the main process's to handle (in this
    order, so that a worker seen ignoring SIGINT is one that dies with its parent)."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _prepare_chunk(tasks: list[Task]) -> list[dict]:
    """prepare_image for each (root, relative, max_side) task (one pool job)."""
    return [prepare_image(*task) for task in tasks]


def _kill_workers(executor: ProcessPoolExecutor) -> None:
    """SIGKILL every worker of `executor` now (they only read files: nothing to clean up).

    ProcessPoolExecutor has no public way to do this before Python 3.14 (`kill_workers`); its
    `_processes` (pid -> Process) is the same list that method walks."""
    if hasattr(executor, "kill_workers"):
        executor.kill_workers()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        try:
            process.kill()
        except (OSError, ValueError):  # already gone, or already closed
            pass


def prepared_in_order(tasks: list[Task], workers: int) -> Iterator[dict]:
    """Yield prepare_image results in task order, from `workers` spawned processes (this process
    alone for one worker or one task).

    At most 3 chunks per worker are in flight, so memory stays bounded however slow the
    writing is; a worker that dies (e.g. killed for memory) raises BrokenProcessPool, not a hang.
    Closing the generator early, or an exception (a KeyboardInterrupt), kills the workers.
    """
    if workers <= 1 or len(tasks) < 2:
        for task in tasks:
            yield prepare_image(*task)
        return
    chunk_size = max(1, min(32, len(tasks) // (workers * 4)))
    chunks = (tasks[start:start + chunk_size] for start in range(0, len(tasks), chunk_size))
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(os.getpid(),))
    finished = False
    try:
        pending = deque(executor.submit(_prepare_chunk, chunk) for _, chunk in zip(range(3 * workers), chunks))
        while pending:
            results = pending.popleft().result()
            for chunk in chunks:
                pending.append(executor.submit(_prepare_chunk, chunk))
                break
            yield from results
        finished = True
    finally:
        if not finished:
            _kill_workers(executor)
        # not finished: do not wait for the pool's manager thread, which can stay blocked feeding
        # chunks to the killed workers' call queue (a Ctrl-C then hung for 30 s now and then)
        executor.shutdown(wait=finished, cancel_futures=True)
