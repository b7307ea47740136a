"""An exclusive lock on a folder, held by one process at a time, that says who holds it.

`hold_folder_lock(folder, purpose)` is for commands that write into a folder and must not run
twice at once on it (`selfsup convert` into OUT; `selfsup train` into its run folder, `selfsup
tune` into its search folder, through `hold_output_folder`, which makes the folder first)::

    with hold_folder_lock(output, "selfsup convert") as lock:
        ...  # only this process writes into `output` here

How it works: the lock is `fcntl.flock(LOCK_EX | LOCK_NB)` on the file `FOLDER/.selfsup-lock`.
The holder writes a JSON record into that file, `{"purpose", "host", "pid", "since"}`, so a
second process that finds the lock taken fails at once with a `FolderLockedError` naming the
holder ("in use by selfsup convert, pid 4242 on node-3, since ..."). Leaving the block (also by
an exception) deletes the file and releases the lock. A holder that dies without leaving it (a
SIGKILL, a power cut) leaves the file behind, but never the lock: the kernel releases a flock
when the last descriptor of its file closes. The next holder therefore simply takes the lock,
and reports the record it found as `FolderLock.stale_holder`.

The lock file is hidden (a name starting with '.'), so code that lists a folder's visible files
never takes it for data. Its descriptor is not inherited by programs the holder starts (os.open's
default, close-on-exec), so a child process that outlives its parent cannot keep the lock; a child
forked without exec (multiprocessing's "fork" start method) shares it, as flock works, until it
exits too. flock works across the hosts
of a network file system where the file system supports it (NFS does, through byte-range locks);
a file system without locks fails with the OSError of `flock` (ENOLCK, EOPNOTSUPP). Other
failures to create the lock file (a read-only or full disk, no permission) raise their OSError
too, for the caller to report with its own context.

Why not the `filelock` package: it truncates the lock file when it opens it, which would wipe the
holder's record at every refused attempt, and it cannot say who holds the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from selfsup.errors import FolderLockedError

LOCK_FILE = ".selfsup-lock"
RECORD_WAIT_SECONDS = 1.0  # how long a refused process waits for a new holder to write its record


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a folder lock: the record in the lock file."""

    purpose: str
    host: str
    pid: int
    since: str  # ISO 8601, UTC

    def describe(self) -> str:
        """'selfsup convert, pid 4242 on node-3, since 2024-01-01T00:00:00+00:00'."""
        return f"{self.purpose}, pid {self.pid} on {self.host}, since {self.since}"


@dataclass(frozen=True)
class FolderLock:
    """A held folder lock: its file, this process's record, and the record of a holder that
    died without releasing it (None when the lock was free)."""

    path: Path
    holder: LockHolder
    stale_holder: LockHolder | None


def _parse_record(data: bytes) -> LockHolder | None:
    """The holder in a lock file's bytes; None when they are empty or not a holder record."""
    try:
        record = json.loads(data.decode("utf-8"))
        return LockHolder(str(record["purpose"]), str(record["host"]), int(record["pid"]), str(record["since"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _read_record(descriptor: int) -> LockHolder | None:
    """The holder record in an open lock file (read from its start)."""
    return _parse_record(os.pread(descriptor, 4096, 0))


def _refusal(folder: Path, descriptor: int) -> FolderLockedError:
    """The error for a lock held by another process, once its record can be read."""
    deadline = time.monotonic() + RECORD_WAIT_SECONDS
    holder = _read_record(descriptor)
    while holder is None and time.monotonic() < deadline:  # the holder may be between flock and write
        time.sleep(0.05)
        holder = _read_record(descriptor)
    who = holder.describe() if holder else "another process (it has not said which)"
    return FolderLockedError(f"{folder}: in use by {who}; wait for it to finish or stop it, then run "
                             f"again (the lock is {folder / LOCK_FILE})", folder=folder, holder=holder)


def _acquire(folder: Path) -> int:
    """An open descriptor of FOLDER/LOCK_FILE holding its exclusive flock."""
    path = folder / LOCK_FILE
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _refusal(folder, descriptor)
            os.close(descriptor)
            raise error from None
        except BaseException:
            os.close(descriptor)
            raise
        # The previous holder deletes the file before it lets go: a lock taken on a file that is no
        # longer at `path` locks nothing, so open the new one and try again.
        opened = os.fstat(descriptor)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            return descriptor
        os.close(descriptor)


@contextmanager
def hold_folder_lock(folder: str | Path, purpose: str) -> Iterator[FolderLock]:
    """Hold the exclusive lock of the existing folder `folder` for the block (see the module
    docstring); `purpose` names the holder for whoever is refused, e.g. "selfsup convert".

    Raises FolderLockedError at once when another process holds it, and the OSError of the
    file system when the lock file cannot be created or locked.
    """
    folder = Path(folder)
    descriptor = _acquire(folder)
    try:
        stale = _read_record(descriptor)
        holder = LockHolder(purpose, socket.gethostname(), os.getpid(),
                            datetime.now(timezone.utc).isoformat(timespec="seconds"))
        record = json.dumps({"purpose": holder.purpose, "host": holder.host, "pid": holder.pid,
                             "since": holder.since}).encode("utf-8")
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, record, 0)
        yield FolderLock(folder / LOCK_FILE, holder, stale)
    finally:
        try:
            os.unlink(folder / LOCK_FILE)  # while still holding it: see `_acquire`
        except OSError:
            pass
        os.close(descriptor)


@contextmanager
def hold_output_folder(folder: str | Path, purpose: str) -> Iterator[FolderLock]:
    """`hold_folder_lock` on a command's output folder, made first when it does not exist. Taking
    over a lock whose holder died, it says so on stderr in one line naming that holder ("selfsup:
    RUN: taking over the lock of selfsup train, pid 4242 on node-3, since ... (no longer running)")."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with hold_folder_lock(folder, purpose) as lock:
        if lock.stale_holder is not None:
            print(f"selfsup: {folder}: taking over the lock of {lock.stale_holder.describe()} (no longer running)",
                  file=sys.stderr, flush=True)
        yield lock


def lock_holder(folder: str | Path) -> LockHolder | None:
    """The record in FOLDER's lock file, without taking the lock: the holder while one holds it,
    or one that died without releasing it; None when there is no lock file."""
    try:
        return _parse_record((Path(folder) / LOCK_FILE).read_bytes())
    except OSError:
        return None
