"""Writing files so that a reader sees all of a file or none of it, and renames survive a power cut.

Shards, manifests, `dataset.json`, checkpoints and run summaries are all written through here.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: str | Path, data: bytes, *, sync_parent: bool = True) -> None:
    """Write `data` to `path` via `path.partial` + fsync + os.replace, so readers see all or nothing.

    `sync_parent=False` skips the folder fsync (for callers that sync the folder themselves, or
    whose file may be lost on a power cut without harm).
    A failure (a full disk, say) removes the temporary file and leaves `path` as it was.
    """
    path = Path(path)
    temporary = path.with_name(path.name + ".partial")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            temporary.unlink()
        except OSError:
            pass
        raise
    if sync_parent:
        sync_folder(path.parent)


def sync_folder(folder: str | Path) -> None:
    """fsync a folder so that renames inside it survive a power loss (best effort)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
