"""Temporary entries in a checkpoint folder that name their writer, and which leftovers may go.

A checkpoint save (`trainer.checkpoint.save_checkpoint`) writes its temporary entries (the new
checkpoint before its rename, a checkpoint of the same step moved aside, the new `latest`) as

    .tmp-PID@HOST~WHAT-RANDOM        e.g. .tmp-4242@node-3~step-00000100-1f0c...

and, before it writes, removes the leftovers of saves that did not finish. Two writers may share
one folder (two runs started into it by mistake, a restarted worker while the old one winds
down), so a save removes only what no live writer is still writing:

- its own process's leftovers (saves within one process run one after another);
- a leftover of another process on this host once that process is gone (`os.kill(pid, 0)` finds
  no such process); one still running keeps its entries, however old;
- a leftover of a writer on another host (whose processes cannot be asked), or one named in the
  older `.tmp-WHAT-RANDOM` form without its writer, once nothing in it has changed for
  `UNOWNED_STALE_SECONDS`: a save in progress writes its file continuously and takes seconds to
  minutes, so an hour without a change means its writer is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

TEMP_PREFIX = ".tmp-"
UNOWNED_STALE_SECONDS = 3600.0
_WRITER = re.compile(r"^\.tmp-(\d+)@([A-Za-z0-9._-]+)~")


def this_host() -> str:
    """This host's name as temporary names carry it: only letters, digits, '.', '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "unknown"


def temporary_name(what: str) -> str:
    """'.tmp-PID@HOST~WHAT-RANDOM': a new temporary entry's name, naming this process as its writer."""
    return f"{TEMP_PREFIX}{os.getpid()}@{this_host()}~{what}-{uuid.uuid4().hex}"


def writer_of(name: str) -> tuple[int, str] | None:
    """(pid, host) of the writer a temporary entry's name carries; None for a name without one."""
    match = _WRITER.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


def _process_is_running(pid: int) -> bool:
    if pid <= 0:  # 0 and negative numbers name process groups, never one writer
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: running
        return True
    return True


def _last_change(entry: Path) -> float:
    """The newest modification time of `entry` and, for a folder, of what it holds."""
    times = [entry.lstat().st_mtime]
    if entry.is_dir() and not entry.is_symlink():
        times.extend(child.lstat().st_mtime for child in entry.iterdir())
    return max(times)


def is_abandoned(entry: Path, now: float | None = None) -> bool:
    """Whether the temporary entry `entry` is a leftover no live writer is writing (see the module
    docstring); False for an entry that is gone already."""
    writer = writer_of(entry.name)
    if writer is not None and writer[1] == this_host():
        return writer[0] == os.getpid() or not _process_is_running(writer[0])
    try:
        idle = (time.time() if now is None else now) - _last_change(entry)
    except FileNotFoundError:
        return False
    return idle > UNOWNED_STALE_SECONDS


def remove_abandoned(directory: Path) -> list[Path]:
    """Delete the abandoned temporary entries of `directory` (`is_abandoned`); the ones deleted."""
    removed = []
    for entry in directory.glob(TEMP_PREFIX + "*"):
        if not is_abandoned(entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
