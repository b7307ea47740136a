"""Stopping a run cleanly: SIGTERM or SIGINT ask the loop to checkpoint and return.

A cluster scheduler preempts a job with SIGTERM (then SIGKILL after a grace period); a user
presses Ctrl-C (SIGINT). Either one sets a `StopRequest`; the loop notices it after the current
step, agrees on it with the other ranks, writes a checkpoint and returns. The next start on the
same output folder continues from there. A second Ctrl-C interrupts at once.

Handlers can only be installed from the main thread (Python's rule); elsewhere (a Ray Train
worker thread) `handle_stop_signals` does nothing and `StopRequest.request()` is the way in.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class StopRequest:
    """A flag the loop reads after every step; `reason` says who set it."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def request(self, reason: str = "stop requested") -> None:
        if self.reason is None:
            self.reason = reason

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
