"""Stopping a run cleanly: SIGTERM or SIGINT ask the loop to checkpoint and return.

A cluster scheduler preempts a job with SIGTERM (then SIGKILL after a grace period); a user
presses Ctrl-C (SIGINT). Either one sets a `StopRequest`; the loop notices it after the current
step, agrees on it with the other ranks, writes a checkpoint and returns. The next start on the
same output folder continues from there. A second Ctrl-C interrupts at once.

Handlers can only be installed from the main thread (Python's rule); elsewhere (a Ray Train
worker thread) `handle_stop_signals` does nothing. There the request comes from outside:
`poll_for_stop` asks a caller-given `check` (for example "has the driver been signalled?") every
few seconds and sets the `StopRequest` when it answers with a reason.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator


class StopRequest:
    """A flag the loop reads after every step; `reason` says who set it.

    `on_request` (optional) is called once, with the reason, when the flag is first set: a
    driver uses it to pass a signal on to its workers.
    """

    def __init__(self, on_request: Callable[[str], None] | None = None) -> None:
        self.reason: str | None = None
        self.on_request = on_request

    def request(self, reason: str = "stop requested") -> None:
        if self.reason is None:
            self.reason = reason
            if self.on_request is not None:
                self.on_request(reason)

    @property
    def requested(self) -> bool:
        return self.reason is not None


@contextmanager
def handle_stop_signals(stop: StopRequest, signals=(signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Within the block, the first SIGTERM/SIGINT sets `stop`; a second SIGINT raises KeyboardInterrupt.

    The previous handlers are put back on leaving the block.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(number, frame):
        name = signal.Signals(number).name
        if stop.requested and number == signal.SIGINT:
            raise KeyboardInterrupt
        stop.request(name)

    previous = {number: signal.signal(number, on_signal) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def poll_for_stop(stop: StopRequest, check: Callable[[], str | None], every: float = 1.0) -> Iterator[None]:
    """Within the block, a background thread calls `check()` at once and then every `every` seconds;
    the first reason it returns (a non-empty string) sets `stop`.

    If `check` raises, the thread says so on stderr and stops watching; training goes on.
    """
    if not every > 0:
        raise ValueError(f"every={every!r}: expected a number of seconds above 0")
    finished = threading.Event()

    def watch() -> None:
        while not stop.requested:
            try:
                reason = check()
            except Exception as error:  # the source of stop requests is gone (e.g. its process died)
                print(f"stop check failed ({type(error).__name__}: {error}); no longer watching for stop "
                      "requests", file=sys.stderr, flush=True)
                return
            if reason:
                stop.request(reason)
            if finished.wait(every):
                return

    thread = threading.Thread(target=watch, name="poll-for-stop", daemon=True)
    thread.start()
    try:
        yield
    finally:
        finished.set()
        thread.join(timeout=every + 5)
