"""Staging a converted dataset from shared or object storage onto a node's local disk.

The DALI reader reads local files. A dataset kept at a URI that pyarrow's filesystems
understand (`s3://bucket/shapes`, `gs://...`, `hdfs://...`, `file:///mnt/shared/shapes`) is copied
once per node into a cache folder before training: `dataset.json`, `manifest.parquet`,
`errors.jsonl` and every shard with its index. Every rank reads every part of the split over
the epochs (the reader moves each rank to the next part after each pass), so a node keeps the
whole dataset, not one rank's part.

- Ranks of the same node share the copy: the first takes a file lock and copies, the others wait
  for it and then find the files there.
- Crash safety: each file is written as `NAME.partial` and renamed; `dataset.json` is renamed
  into place last, so a folder with `dataset.json` is complete. A second call copies only what is
  missing (same size), and starts over when the source is another conversion (fingerprint).
- Bounded space: with `max_bytes`, other datasets in the cache are deleted, least recently
  used first, until this one fits; a dataset larger than `max_bytes` alone is refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow.fs

from pipeline.dataset import DATASET_FILE, ERRORS_FILE, MANIFEST_FILE, DatasetError
from pipeline.shards import parse_size

MARKER_FILE = ".staged"  # in a staged folder: the source URI; its mtime is the last use


def is_uri(path: str) -> bool:
    """Whether `path` names a location on a (possibly remote) filesystem by scheme, e.g. s3://."""
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path) is not None


def staged_folder(uri: str, cache_root: str | Path) -> Path:
    """The cache folder that holds the staged copy of `uri`: readable name + a hash of the URI."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", uri.rstrip("/").rsplit("/", 1)[-1]) or "dataset"
    digest = hashlib.sha256(uri.rstrip("/").encode("utf-8")).hexdigest()[:12]
    return Path(cache_root) / f"{name}-{digest}"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if needed), held by one process of the node at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remote_files(filesystem: pyarrow.fs.FileSystem, base: str, description: dict) -> dict[str, int]:
    """name -> size of every file the dataset consists of (dataset.json excluded)."""
    names = [MANIFEST_FILE, ERRORS_FILE]
    for split in description.get("splits", {}).values():
        for shard in split.get("shards", []):
            names += [shard, shard[: -len(".tar")] + ".idx"]
    infos = filesystem.get_file_info([f"{base}/{name}" for name in names])
    sizes = {}
    for name, info in zip(names, infos):
        if info.type == pyarrow.fs.FileType.File:
            sizes[name] = info.size
        elif name != ERRORS_FILE:
            raise DatasetError(f"{base}/{name}: missing (listed in {base}/{DATASET_FILE})")
    return sizes


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _make_room(cache_root: Path, keep: Path, needed: int, max_bytes: int) -> None:
    """Delete other staged datasets, least recently used first, until `needed` more bytes fit."""
    others = [folder for folder in cache_root.iterdir() if folder.is_dir() and folder != keep]
    used = sum(_folder_bytes(folder) for folder in others) + (_folder_bytes(keep) if keep.exists() else 0)

    def last_use(folder: Path) -> float:
        marker = folder / MARKER_FILE
        return marker.stat().st_mtime if marker.exists() else 0.0

    for folder in sorted(others, key=last_use):
        if used + needed <= max_bytes:
            break
        size = _folder_bytes(folder)
        with _locked(cache_root / f".lock-{folder.name}"):
            shutil.rmtree(folder, ignore_errors=True)
        used -= size


def _copy(filesystem: pyarrow.fs.FileSystem, source: str, target: Path) -> None:
    temporary = target.with_name(target.name + ".partial")
    with filesystem.open_input_stream(source) as reader, open(temporary, "wb") as writer:
        while chunk := reader.read(8 << 20):
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    os.replace(temporary, target)


def stage_dataset(uri: str, cache_root: str | Path, *, max_bytes: int | str | None = None) -> Path:
    """Copy the converted dataset at `uri` into `cache_root` (what is missing only); return the copy.

    A plain path (no scheme) is returned as it is: it is already local (or a shared mount).
    """
    if not is_uri(uri):
        return Path(uri)
    cache_root = Path(cache_root)
    limit = parse_size(max_bytes) if max_bytes is not None else None
    try:
        filesystem, base = pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowInvalid, OSError) as error:
        raise DatasetError(f"{uri}: not a location pyarrow can open ({error})") from error
    base = base.rstrip("/")
    try:
        with filesystem.open_input_stream(f"{base}/{DATASET_FILE}") as reader:
            description_bytes = reader.read()
    except (FileNotFoundError, OSError) as error:
        raise DatasetError(f"{uri}/{DATASET_FILE}: not readable; is {uri} a finished conversion? "
                           f"({error})") from error
    description = json.loads(description_bytes)
    folder = staged_folder(uri, cache_root)
    with _locked(cache_root / f".lock-{folder.name}"):
        local_description = folder / DATASET_FILE
        if local_description.exists():
            if json.loads(local_description.read_text()).get("fingerprint") == description.get("fingerprint"):
                (folder / MARKER_FILE).touch()
                return folder
            shutil.rmtree(folder)  # another conversion at the same URI: start over
        sizes = _remote_files(filesystem, base, description)
        total = sum(sizes.values()) + len(description_bytes)
        if limit is not None:
            if total > limit:
                raise DatasetError(f"{uri}: {total} bytes do not fit the staging limit of {limit} bytes "
                                   f"on this node (raise it, or train from a shared mount)")
            _make_room(cache_root, folder, total - (_folder_bytes(folder) if folder.exists() else 0), limit)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER_FILE).write_text(uri + "\n")
        started = time.monotonic()
        for name, size in sizes.items():
            target = folder / name
            if not (target.exists() and target.stat().st_size == size):
                _copy(filesystem, f"{base}/{name}", target)
        temporary = folder / (DATASET_FILE + ".partial")
        temporary.write_bytes(description_bytes)
        os.replace(temporary, local_description)  # last: marks the copy complete
        print(f"staged {uri} -> {folder} ({total / 1e6:.1f} MB in {time.monotonic() - started:.1f} s)",
              flush=True)
    return folder
