"""Staging a converted dataset from shared or object storage onto a node's local disk.

The DALI reader reads local files. A dataset kept at a URI that pyarrow's filesystems
understand (`s3://bucket/shapes`, `gs://...`, `hdfs://...`, `file:///mnt/shared/shapes`) is copied
into a cache folder on each node before training. `stage_dataset` copies `dataset.json`,
`manifest.parquet`, `errors.jsonl`, every `.idx` and, by default, every shard: the whole dataset
(what the kNN evaluation, which reads every sample, needs). With `with_shards=False` it copies the
small files only and leaves a placeholder (a link to the empty `.not-staged`) where each shard
goes, so that the folder still describes the whole dataset; `pipeline.node_staging` then brings
in, epoch by epoch, only the shards the node's ranks read, and evicts those no rank needs.

- Ranks of the same node share the copy: the first takes a file lock and copies, the others wait
  for it and then find the files there. Each file has its own lock too (`.locks/NAME.lock`),
  held while it is copied or evicted.
- Crash safety: each file is written as `NAME.partial` and renamed (over its placeholder, if
  any); `dataset.json` is renamed into place last, so a folder with `dataset.json` has all its
  small files (and, staged whole, all its shards). A second call copies only what is missing (same
  size), and starts over when the source is another conversion (fingerprint). A copy whose length
  is not the one listed at the source is an error naming the file and both sizes.
- Bounded space: with `max_bytes`, other datasets in the cache (none a running trainer claims)
  are deleted, least recently used first, until this one fits; a dataset larger than `max_bytes`
  alone is refused.

Object stores other than AWS (MinIO, Ceph, a test server) are reached the way pyarrow reads them:
`s3://bucket/shapes?endpoint_override=HOST:PORT&scheme=http`, or `AWS_ENDPOINT_URL`; credentials
come from the usual AWS variables and files (or `s3://KEY:SECRET@bucket/...`). Messages, folder
names and the `.staged` marker show the URI without credentials (`public_uri`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import threading
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow.fs

from selfsup.pipeline.dataset import DATASET_FILE, ERRORS_FILE, MANIFEST_FILE, check_description

from selfsup.errors import DatasetError
from selfsup.pipeline.shards import parse_size

MARKER_FILE = ".staged"  # in a staged folder: the source URI; its mtime is the last use
FILES_LIST = ".files.json"  # in a staged folder: name -> size of every file of the dataset at the source
PLACEHOLDER_FILE = ".not-staged"  # empty; a shard not on this node is a link to it
LOCKS_FOLDER = ".locks"  # one lock file per dataset file: held while it is copied or evicted
CLAIMS_FOLDER = ".claims"  # one file per rank reading the folder: the epoch it reads (node_staging)


def is_uri(path: str) -> bool:
    """Whether `path` names a location on a (possibly remote) filesystem by scheme, e.g. s3://."""
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path) is not None


SECRET_QUERY_KEYS = ("key", "secret", "token", "password", "credential")  # parts of a query key to hide


def public_uri(uri: str) -> str:
    """`uri` safe to print: no `user:password@` part, secret-looking query values hidden.

    s3://KEY:SECRET@bucket/shapes?endpoint_override=h:9000 -> s3://bucket/shapes?endpoint_override=h:9000
    """
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = [(key, "***" if any(word in key.lower() for word in SECRET_QUERY_KEYS) else value)
             for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"),
                                    urllib.parse.urlencode(query, safe=":/"), ""))


def location(uri: str, name: str = "") -> str:
    """A file of the dataset at `uri`, for messages: s3://bucket/shapes/NAME (query and credentials left out)."""
    parts = urllib.parse.urlsplit(public_uri(uri))
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return f"{base}/{name}" if name else base


def staged_folder(uri: str, cache_root: str | Path) -> Path:
    """The cache folder that holds the staged copy of `uri`: readable name + a hash of the URI.

    The hash covers the endpoint and the rest of the query (another server is another dataset),
    not the credentials.
    """
    public = public_uri(uri)
    last = urllib.parse.urlsplit(public).path.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", last) or "dataset"
    digest = hashlib.sha256(public.encode("utf-8")).hexdigest()[:12]
    return Path(cache_root) / f"{name}-{digest}"


@contextmanager
def locked(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on `path` (created if needed), held by one process of the node at a time
    (and by one open of it within a process). Yields whether it is held: with `wait=False`, False
    at once when another holder has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def folder_lock(folder: Path) -> Path:
    """The lock of a staged folder as a whole (beside it in the cache)."""
    return folder.parent / f".lock-{folder.name}"


def file_lock(folder: Path, name: str) -> Path:
    """The lock of one file of a staged folder: held while it is copied or evicted."""
    return folder / LOCKS_FOLDER / f"{name}.lock"


def open_filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    try:
        filesystem, base = pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowInvalid, OSError) as error:
        raise DatasetError(f"{public_uri(uri)}: not a location pyarrow can open ({error})") from None
    return filesystem, base.rstrip("/")


def _read_description(filesystem: pyarrow.fs.FileSystem, base: str, uri: str) -> bytes:
    """The bytes of dataset.json at `uri`; a clear error for a missing bucket, folder or file, or an
    unreachable endpoint."""
    try:
        with filesystem.open_input_stream(f"{base}/{DATASET_FILE}") as reader:
            return reader.read()
    except FileNotFoundError:
        pass
    except OSError as error:  # the endpoint refused, timed out, or denied access
        raise DatasetError(f"{location(uri, DATASET_FILE)}: cannot read it from {public_uri(uri)} "
                           f"({error})") from None
    if filesystem.type_name in ("s3", "gcs"):
        bucket = base.split("/", 1)[0]
        try:
            exists = filesystem.get_file_info(bucket).type != pyarrow.fs.FileType.NotFound
        except OSError:
            exists = True
        if not exists:
            raise DatasetError(f"{public_uri(uri)}: the bucket {bucket!r} does not exist")
    raise DatasetError(f"{location(uri, DATASET_FILE)}: not found; is {public_uri(uri)} a finished "
                       "conversion (a folder written by `selfsup convert`)?")


def _remote_files(filesystem: pyarrow.fs.FileSystem, base: str, description: dict,
                  uri: str) -> dict[str, int]:
    """name -> size of every file the dataset consists of (dataset.json excluded)."""
    names = [MANIFEST_FILE, ERRORS_FILE]
    for split in description.get("splits", {}).values():
        for shard in split.get("shards", []):
            names += [shard, shard[: -len(".tar")] + ".idx"]
    try:
        infos = filesystem.get_file_info([f"{base}/{name}" for name in names])
    except OSError as error:
        raise DatasetError(f"{public_uri(uri)}: cannot list the dataset's files ({error})") from None
    sizes = {}
    for name, info in zip(names, infos):
        if info.type == pyarrow.fs.FileType.File:
            sizes[name] = info.size
        elif name != ERRORS_FILE:
            raise DatasetError(f"{location(uri, name)}: missing (listed in {location(uri, DATASET_FILE)})")
    return sizes


def file_bytes(path: Path) -> int:
    """The size of a regular file; 0 for a link (a placeholder) or a file gone meanwhile."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return 0
    return status.st_size if stat.S_ISREG(status.st_mode) else 0


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under `folder` (placeholders, being links, count nothing)."""
    return sum(file_bytes(path) for path in folder.rglob("*"))


def is_placeholder(path: Path) -> bool:
    """Whether a staged shard is only its placeholder (a link to PLACEHOLDER_FILE): not on this node.
    A link to anything else (a user's shard kept on another disk) is a shard like any other."""
    return path.is_symlink() and os.readlink(path) == PLACEHOLDER_FILE


def is_staged(path: Path, size: int) -> bool:
    """Whether the dataset file at `path` is on this node, whole: not a placeholder, `size` bytes."""
    return not is_placeholder(path) and path.exists() and path.stat().st_size == size


def make_placeholder(path: Path) -> None:
    """Put a placeholder at `path` (replacing the file there, if any, in one rename)."""
    (path.parent / PLACEHOLDER_FILE).touch()
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.link")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(PLACEHOLDER_FILE)
    os.replace(temporary, path)


def live_claims(folder: Path) -> list[dict]:
    """The claims of running processes on `folder` (`pipeline.node_staging`): {rank, world_size, epoch, pid}."""
    claims = []
    for path in (folder / CLAIMS_FOLDER).glob("*.json"):
        try:
            claim = json.loads(path.read_text())
            os.kill(int(claim["pid"]), 0)
        except PermissionError:  # alive, another user's
            pass
        except (OSError, ValueError, KeyError, TypeError):  # gone, or unreadable
            continue
        claims.append(claim)
    return claims


def make_room(cache_root: Path, keep: Path, keep_bytes: int, max_bytes: int) -> None:
    """Delete other staged datasets, least recently used first, until they and `keep` (once it
    holds `keep_bytes`) fit in `max_bytes`. A dataset a running trainer claims is kept."""
    others = [folder for folder in cache_root.iterdir()
              if folder.is_dir() and folder != keep and not live_claims(folder)]
    used = sum(folder_bytes(folder) for folder in others)

    def last_use(folder: Path) -> float:
        marker = folder / MARKER_FILE
        return marker.stat().st_mtime if marker.exists() else 0.0

    for folder in sorted(others, key=last_use):
        if used + keep_bytes <= max_bytes:
            break
        size = folder_bytes(folder)
        with locked(folder_lock(folder)):
            shutil.rmtree(folder, ignore_errors=True)
        used -= size


def copy_file(filesystem: pyarrow.fs.FileSystem, source: str, target: Path, size: int) -> None:
    """Copy `source` to `target` through `target.partial` + fsync + rename; `size` is what the
    source listed: a copy of another length is removed and reported (DatasetError)."""
    temporary = target.with_name(target.name + ".partial")
    written = 0
    try:
        with filesystem.open_input_stream(source) as reader, open(temporary, "wb") as writer:
            while chunk := reader.read(8 << 20):
                writer.write(chunk)
                written += len(chunk)
            writer.flush()
            os.fsync(writer.fileno())
        if written != size:
            raise DatasetError(f"read {written} bytes, expected {size} (its size when the dataset was listed; "
                               "did the dataset at the source change during training?)")
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, target)


def _remove_stale_partials(folder: Path) -> None:
    """Temporary files of copies that stopped half-way (none of a copy still running)."""
    for leftover in folder.glob("*.partial"):
        with locked(file_lock(folder, leftover.name[: -len(".partial")]), wait=False) as free:
            if free:
                leftover.unlink(missing_ok=True)


def stage_dataset(uri: str, cache_root: str | Path, *, max_bytes: int | str | None = None,
                  with_shards: bool = True) -> Path:
    """Copy the converted dataset at `uri` into `cache_root` (what is missing only); return the copy.

    `with_shards=False` copies the small files only (dataset.json, the manifest, the errors, every
    `.idx`) and puts a placeholder where each shard not yet on this node goes: the shards come
    per epoch (`pipeline.node_staging.stage_node_parts`). A plain path (no scheme) is returned as
    it is: it is already local (or a shared mount).
    """
    if not is_uri(uri):
        return Path(uri)
    cache_root = Path(cache_root)
    limit = parse_size(max_bytes) if max_bytes is not None else None
    filesystem, base = open_filesystem(uri)
    description_bytes = _read_description(filesystem, base, uri)
    try:
        description = json.loads(description_bytes)
    except ValueError as error:
        raise DatasetError(f"{location(uri, DATASET_FILE)}: not valid JSON ({error})") from None
    check_description(description, location(uri, DATASET_FILE))  # no shard name may leave the folder
    folder = staged_folder(uri, cache_root)
    with locked(folder_lock(folder)):
        local_description = folder / DATASET_FILE
        if local_description.exists():
            if json.loads(local_description.read_text()).get("fingerprint") == description.get("fingerprint"):
                shards = [folder / shard for split in description.get("splits", {}).values()
                          for shard in split.get("shards", [])]
                if not with_shards or not any(is_placeholder(shard) for shard in shards):
                    (folder / MARKER_FILE).touch()
                    return folder
            else:
                shutil.rmtree(folder)  # another conversion at the same URI: start over
        sizes = _remote_files(filesystem, base, description, uri)
        wanted = {name: size for name, size in sizes.items() if with_shards or not name.endswith(".tar")}
        marker = (public_uri(uri) + "\n").encode("utf-8")
        listing = json.dumps({**sizes, DATASET_FILE: len(description_bytes)}).encode("utf-8")
        total = sum(wanted.values()) + len(description_bytes) + len(marker) + len(listing)
        if folder.exists():
            _remove_stale_partials(folder)
        if limit is not None:
            if total > limit:
                raise DatasetError(f"{public_uri(uri)}: {total} bytes do not fit the staging limit of {limit} bytes "
                                   f"on this node (raise it, or train from a shared mount)")
            make_room(cache_root, folder, total, limit)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER_FILE).write_bytes(marker)
        started = time.monotonic()
        for name, size in wanted.items():
            target = folder / name
            if not is_staged(target, size):
                with locked(file_lock(folder, name)):
                    try:
                        copy_file(filesystem, f"{base}/{name}", target, size)
                    except (OSError, DatasetError) as error:
                        raise DatasetError(f"{location(uri, name)}: copy to {target} failed ({error}); run "
                                           "again to continue (the files already copied are kept)") from None
        for name in sizes.keys() - wanted.keys():
            if not (folder / name).exists():
                make_placeholder(folder / name)
        (folder / (FILES_LIST + ".partial")).write_bytes(listing)
        os.replace(folder / (FILES_LIST + ".partial"), folder / FILES_LIST)
        temporary = folder / (DATASET_FILE + ".partial")
        temporary.write_bytes(description_bytes)
        os.replace(temporary, local_description)  # last: marks the copy complete
        what = "" if with_shards else " without its shards, which come per epoch"
        print(f"staged {public_uri(uri)} -> {folder}{what} ({total / 1e6:.1f} MB in "
              f"{time.monotonic() - started:.1f} s)", flush=True)
    return folder
