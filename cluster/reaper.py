"""`python -m selfsup.cluster.reaper DRIVER_PID OWNER`: end a local Ray's processes once its driver is gone.

Started by `selfsup.cluster.local_ray.ensure_ray` next to every local Ray it starts, in a session of
its own (a Ctrl-C to the command does not reach it). It polls the driver every half second; when
the driver has exited — normally, or killed — it sends SIGTERM, then after a grace period SIGKILL,
to every process whose environment holds SELFSUP_RAY_OWNER=OWNER (the variable every process of
that Ray inherited from the driver), and exits. Reads /proc only: Linux. Imports no Ray.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

POLL_SECONDS = 0.5
GRACE_SECONDS = 5.0
OWNER_VARIABLE = "SELFSUP_RAY_OWNER"


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:  # a zombie has exited: its parent has not collected it yet
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def owned_processes(owner: str) -> list[int]:
    """The pids whose environment holds OWNER_VARIABLE=owner (this process excluded)."""
    marker = f"{OWNER_VARIABLE}={owner}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def end_processes(pids: list[int], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM each, wait up to `grace` seconds, SIGKILL those still there."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(is_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if is_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def main(argv: list[str]) -> int:
    driver, owner = int(argv[0]), argv[1]
    while is_alive(driver):
        time.sleep(POLL_SECONDS)
    end_processes(owned_processes(owner))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
