"""Per-epoch staging: a node keeps on local disk only the shards its ranks read now and next.

Rank r of W reads part (r + epoch) mod W of the train split (`pipeline.loader`), so in one epoch
the ranks of a node read only their parts, and over W epochs every part. `stage_node_parts`
copies the dataset's small files (`pipeline.staging.stage_dataset(with_shards=False)`: a
placeholder stands where each shard goes), checks that one epoch of the node fits its space
limit, and returns the folder with its `NodeStaging` session, which the caller hands on
explicitly (`trainer.loop.train(..., staging=)` -> `build_train_loader(..., staging=)`; no
module keeps it). Then each rank's loader, when it is built for an epoch, calls
`NodeStaging.prepare`, which:

1. records the rank's claim (`.claims/rank-R-of-W.json`: its epoch and process id) — the files of
   every live claim's current epoch, and of its next, are what eviction keeps;
2. copies the shard files of the rank's part (`pipeline.shard_parts.part_spans`) that are not
   on disk yet, making room within the limit: first by deleting other datasets of the cache
   (least recently used, none a trainer claims), then by putting back the placeholder of shards
   no live claim needs now or next, then, for a file needed now, of shards needed only next;
   when even that does not free enough (the other ranks of the node have not moved on to this
   epoch yet) it waits for them, and gives up after WAIT_FOR_ROOM_SECONDS with the numbers;
3. returns the files and indexes that make DALI read exactly the rank's part
   (`pipeline.shard_parts.write_part_indexes`);
4. starts a background thread that copies the rank's files of the next epoch while this one
   trains, as far as they fit without evicting a file needed now.

Ranks of a node share one copy: a file is copied under its own lock (`.locks/NAME.lock`, held
per open, so also between sessions or threads of one process), so it is copied once while the
other ranks wait for it; room is made under the folder's lock, so the
space decisions of the ranks do not race; a file being copied counts at its full size. A loader
maps its files when it is built (DALI does), so a file evicted after that stays readable to it.

Crash safety is staging's: each copy is `NAME.partial` + rename (the rename replaces the
placeholder), an eviction is one rename of a placeholder over the file, and a claim of a process
that is gone counts for nothing. The source URI, with any credentials, stays in this process's
memory; files, folder names and messages carry `public_uri` only.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from selfsup.pipeline.dataset import DATASET_FILE

from selfsup.errors import DatasetError
from selfsup.pipeline.shard_parts import FileSpan, part_spans, write_part_indexes
from selfsup.pipeline.staging import (CLAIMS_FOLDER, FILES_LIST, MARKER_FILE, copy_file, file_bytes, file_lock,
                              folder_bytes, folder_lock, is_placeholder, is_staged, live_claims, location, locked,
                              make_placeholder, make_room, open_filesystem, public_uri, stage_dataset)
from selfsup.pipeline.shards import index_lines, parse_size

WAIT_FOR_ROOM_SECONDS = 600.0  # how long a file needed now waits for the node's other ranks to free room
PARTS_FOLDER = ".parts"  # trimmed indexes of the first and last file of each part

def placeholders(paths: list[str]) -> list[str]:
    """The names among `paths` that are placeholders of shards not staged on this node."""
    return [Path(path).name for path in paths if is_placeholder(Path(path))]


def stage_node_parts(uri: str, cache_root: str | Path, *, node_ranks: list[int] | tuple[int, ...],
                     world_size: int, max_bytes: int | str | None = None,
                     split: str = "train") -> tuple[Path, "NodeStaging | None"]:
    """Stage the small files of the dataset at `uri` and set up per-epoch staging of the shards
    that `node_ranks` (the world ranks on this node) of `world_size` read; return the folder and
    that staging session, which the train loader of the folder is given
    (`build_train_loader(..., staging=session)`) to copy each epoch's shards.

    A space limit smaller than one epoch of this node needs is refused here, naming the numbers.
    A plain path (no scheme) is returned as it is, with no session.
    """
    folder = stage_dataset(uri, cache_root, max_bytes=max_bytes, with_shards=False)
    if folder == Path(uri):
        return folder, None
    session = NodeStaging(uri, folder, node_ranks, world_size, parse_size(max_bytes) if max_bytes else None, split)
    session.check_limit()
    return folder, session


class NodeStaging:
    """The shards of one staged folder that this process's rank(s) read, epoch by epoch."""

    def __init__(self, uri: str, folder: Path, node_ranks, world_size: int, limit: int | None, split: str):
        self.uri, self.folder, self.limit, self.split = uri, Path(folder), limit, split
        self.node_ranks, self.world_size = tuple(sorted(node_ranks)), world_size
        self.filesystem, self.base = open_filesystem(uri)
        description = json.loads((self.folder / DATASET_FILE).read_text())
        self.shards = [self.folder / name for name in description["splits"][split]["shards"]]
        self.counts = [len(index_lines(shard.with_suffix(".idx"))) for shard in self.shards]
        self.sizes: dict[str, int] = json.loads((self.folder / FILES_LIST).read_text())
        self.prefetch_next = True  # copy the next epoch's files in the background (tests turn it off)
        self._prefetching: dict[tuple[int, int, int], threading.Thread] = {}
        self.prefetch_errors: list[BaseException] = []

    # --- what a part needs ---------------------------------------------------------------------

    def spans(self, rank: int, world_size: int, epoch: int) -> list[FileSpan]:
        """The files, and their samples, that `rank` of `world_size` reads in `epoch`."""
        return part_spans(self.shards, self.counts, (rank + epoch) % world_size, world_size)

    def part_files(self, rank: int, world_size: int, epoch: int) -> set[str]:
        return {span.shard.name for span in self.spans(rank, world_size, epoch)}

    def node_files(self, epoch: int) -> set[str]:
        """The shard files every rank of this node reads in `epoch`."""
        return set().union(*(self.part_files(rank, self.world_size, epoch) for rank in self.node_ranks))

    def small_bytes(self) -> int:
        return sum(size for name, size in self.sizes.items() if not name.endswith(".tar"))

    def check_limit(self) -> None:
        """A DatasetError when one epoch of this node (its largest) does not fit the limit."""
        if self.limit is None:
            return
        needs = [(sum(self.sizes[name] for name in self.node_files(epoch)), epoch)
                 for epoch in range(self.world_size)]
        shard_bytes, epoch = max(needs)
        need = shard_bytes + self.small_bytes()
        if need > self.limit:
            count = len(self.node_files(epoch))
            raise DatasetError(
                f"{public_uri(self.uri)}: one epoch on this node needs {need} bytes ({count} shard files, "
                f"{shard_bytes} bytes, read by ranks {list(self.node_ranks)} of {self.world_size} in epoch "
                f"{epoch + 1}, plus {self.small_bytes()} bytes of indexes and summaries), more than the "
                f"staging limit of {self.limit} bytes on this node (raise it, or train from a shared mount)")

    # --- one rank's epoch ----------------------------------------------------------------------

    def prepare(self, rank: int, world_size: int, epoch: int) -> tuple[list[str], list[str]]:
        """Stage what `rank` reads in `epoch` and start prefetching its next epoch; return the
        (paths, index_paths) that make DALI's reader (shard_id=0, num_shards=1) read its part."""
        self._claim(rank, world_size, epoch)
        spans = self.spans(rank, world_size, epoch)
        for span in spans:
            self._ensure(span.shard.name, required=True)
        indexes = write_part_indexes(spans, self.folder / PARTS_FOLDER / f"{self.split}-of-{world_size}")
        (self.folder / MARKER_FILE).touch()  # in use: the last to go when the cache makes room
        if self.prefetch_next:
            self.prefetch(rank, world_size, epoch + 1)
        return [str(span.shard) for span in spans], indexes

    def prefetch(self, rank: int, world_size: int, epoch: int) -> None:
        """Copy, in a background thread, the files `rank` reads in `epoch` (as far as they fit)."""
        key = (rank, world_size, epoch)
        if key in self._prefetching:
            return
        names = [span.shard.name for span in self.spans(rank, world_size, epoch)]

        def run() -> None:
            try:
                for name in names:
                    if not self._ensure(name, required=False):
                        break
            except BaseException as error:  # reported; the epoch's own staging copies what is missing
                self.prefetch_errors.append(error)
                print(f"selfsup: prefetching epoch {epoch + 1} of {public_uri(self.uri)} failed: {error}",
                      file=sys.stderr, flush=True)

        thread = threading.Thread(target=run, name=f"selfsup-stage-epoch-{epoch + 1}", daemon=True)
        self._prefetching[key] = thread
        thread.start()

    def wait_for_prefetch(self) -> None:
        for thread in list(self._prefetching.values()):
            thread.join()

    # --- claims, room, copies ------------------------------------------------------------------

    def _claim(self, rank: int, world_size: int, epoch: int) -> None:
        path = self.folder / CLAIMS_FOLDER / f"rank-{rank}-of-{world_size}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
        temporary.write_text(json.dumps({"rank": rank, "world_size": world_size, "epoch": epoch,
                                         "pid": os.getpid()}))
        os.replace(temporary, path)

    def _claimed(self) -> tuple[set[str], set[str]]:
        """(files some live claim reads now, files some live claim reads next)."""
        now, upcoming = set(), set()
        for claim in live_claims(self.folder):
            rank, world_size, epoch = int(claim["rank"]), int(claim["world_size"]), int(claim["epoch"])
            now |= self.part_files(rank, world_size, epoch)
            upcoming |= self.part_files(rank, world_size, epoch + 1)
        return now, upcoming - now

    def _staged_bytes(self) -> int:
        """This folder's bytes on disk, a file being copied counted at its full size."""
        pending = sum(max(0, self.sizes.get(path.name[: -len(".partial")], 0) - file_bytes(path))
                      for path in self.folder.glob("*.partial"))
        return folder_bytes(self.folder) + pending

    def _cache_bytes(self) -> int:
        others = [folder for folder in self.folder.parent.iterdir() if folder.is_dir() and folder != self.folder]
        return self._staged_bytes() + sum(folder_bytes(folder) for folder in others)

    def _reserve(self, name: str, required: bool) -> bool:
        """Under the folder's lock: make room for `name` and mark it as being copied (its
        `.partial`), or return False when the limit leaves no room now."""
        with locked(folder_lock(self.folder)):
            if self.limit is not None:
                need = self.sizes[name]
                used = self._cache_bytes()
                if used + need > self.limit:
                    make_room(self.folder.parent, self.folder, self._staged_bytes() + need, self.limit)
                    used = self._cache_bytes()
                now, upcoming = self._claimed()
                evictable = [shard.name for shard in self.shards if shard.name not in now | upcoming]
                if required:  # a file needed now may take the place of one needed only next
                    evictable += [shard.name for shard in self.shards if shard.name in upcoming]
                for candidate in evictable:
                    if used + need <= self.limit:
                        break
                    used -= self._evict(candidate)
                if used + need > self.limit:
                    return False
            (self.folder / (name + ".partial")).touch()
            return True

    def _evict(self, name: str) -> int:
        """Put the placeholder back in place of `name` unless it is absent or busy; bytes freed."""
        path = self.folder / name
        if is_placeholder(path) or not path.exists():
            return 0
        with locked(file_lock(self.folder, name), wait=False) as free:
            if not free:
                return 0
            size = path.stat().st_size
            make_placeholder(path)
            return size

    def _ensure(self, name: str, *, required: bool) -> bool:
        """`name` on disk, copied now if needed; False when a prefetch finds no room."""
        target = self.folder / name
        with locked(file_lock(self.folder, name)):
            if is_staged(target, self.sizes[name]):
                return True
            deadline = time.monotonic() + WAIT_FOR_ROOM_SECONDS
            while not self._reserve(name, required):
                if not required:
                    return False
                if time.monotonic() > deadline:
                    raise DatasetError(
                        f"{location(self.uri, name)}: no room for its {self.sizes[name]} bytes under the staging "
                        f"limit of {self.limit} bytes on this node after {WAIT_FOR_ROOM_SECONDS:.0f} s (staged now: "
                        f"{self._cache_bytes()} bytes, files the node's ranks read now: {sorted(self._claimed()[0])})")
                time.sleep(1.0)
            try:
                copy_file(self.filesystem, f"{self.base}/{name}", target, self.sizes[name])
            except (OSError, DatasetError) as error:
                (self.folder / (name + ".partial")).unlink(missing_ok=True)
                raise DatasetError(f"{location(self.uri, name)}: copy to {target} failed ({error}); "
                                   "training again continues (the files already copied are kept)") from None
            return True
