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
import time
import urllib.parse
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


def _location(uri: str, name: str = "") -> str:
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
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if needed), held by one process of the node at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _open_filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
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
        raise DatasetError(f"{_location(uri, DATASET_FILE)}: cannot read it from {public_uri(uri)} "
                           f"({error})") from None
    if filesystem.type_name in ("s3", "gcs"):
        bucket = base.split("/", 1)[0]
        try:
            exists = filesystem.get_file_info(bucket).type != pyarrow.fs.FileType.NotFound
        except OSError:
            exists = True
        if not exists:
            raise DatasetError(f"{public_uri(uri)}: the bucket {bucket!r} does not exist")
    raise DatasetError(f"{_location(uri, DATASET_FILE)}: not found; is {public_uri(uri)} a finished "
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
            raise DatasetError(f"{_location(uri, name)}: missing (listed in {_location(uri, DATASET_FILE)})")
    return sizes


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _make_room(cache_root: Path, keep: Path, keep_bytes: int, max_bytes: int) -> None:
    """Delete other staged datasets, least recently used first, until they and `keep` (once it
    holds `keep_bytes`) fit in `max_bytes`."""
    others = [folder for folder in cache_root.iterdir() if folder.is_dir() and folder != keep]
    used = sum(_folder_bytes(folder) for folder in others)

    def last_use(folder: Path) -> float:
        marker = folder / MARKER_FILE
        return marker.stat().st_mtime if marker.exists() else 0.0

    for folder in sorted(others, key=last_use):
        if used + keep_bytes <= max_bytes:
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
    filesystem, base = _open_filesystem(uri)
    description_bytes = _read_description(filesystem, base, uri)
    try:
        description = json.loads(description_bytes)
    except ValueError as error:
        raise DatasetError(f"{_location(uri, DATASET_FILE)}: not valid JSON ({error})") from None
    folder = staged_folder(uri, cache_root)
    with _locked(cache_root / f".lock-{folder.name}"):
        local_description = folder / DATASET_FILE
        if local_description.exists():
            if json.loads(local_description.read_text()).get("fingerprint") == description.get("fingerprint"):
                (folder / MARKER_FILE).touch()
                return folder
            shutil.rmtree(folder)  # another conversion at the same URI: start over
        sizes = _remote_files(filesystem, base, description, uri)
        marker = (public_uri(uri) + "\n").encode("utf-8")
        total = sum(sizes.values()) + len(description_bytes) + len(marker)
        for leftover in folder.glob("*.partial"):  # from a copy that stopped half-way
            leftover.unlink()
        if limit is not None:
            if total > limit:
                raise DatasetError(f"{public_uri(uri)}: {total} bytes do not fit the staging limit of {limit} bytes "
                                   f"on this node (raise it, or train from a shared mount)")
            _make_room(cache_root, folder, total, limit)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER_FILE).write_bytes(marker)
        started = time.monotonic()
        for name, size in sizes.items():
            target = folder / name
            if not (target.exists() and target.stat().st_size == size):
                try:
                    _copy(filesystem, f"{base}/{name}", target)
                except OSError as error:
                    raise DatasetError(f"{_location(uri, name)}: copy to {target} failed ({error}); run "
                                       "again to continue (the files already copied are kept)") from None
        temporary = folder / (DATASET_FILE + ".partial")
        temporary.write_bytes(description_bytes)
        os.replace(temporary, local_description)  # last: marks the copy complete
        print(f"staged {public_uri(uri)} -> {folder} ({total / 1e6:.1f} MB in {time.monotonic() - started:.1f} s)",
              flush=True)
    return folder
