"""Where each sample of a split sits: DALI's `source_info` of a sample -> its position in the split.

A sample's position is its place in the order DALI lists a split's samples: the split's shards in
`dataset.json` order, each shard's samples in tar order. It is the row of NPID's and
DeepCluster's memory banks (`index` in the train loader's batches) and, for a dataset adopted
with `selfsup index` (whose labels live in `manifest.parquet`, not in `.cls` members), the row
whose label a sample carries.

DALI's `source_info` of an image read by `fn.readers.webdataset` is `TAR PATH:DATA OFFSET:MEMBER`,
the offset being that of the image member's data, which the manifest's `offset` column records.
The lookup is built from the manifest's columns with numpy (no Python object per sample), so it
costs about 12 bytes per sample and a fraction of a second per million samples, whatever the
sample keys look like (numeric for `selfsup convert`, anything for shards made elsewhere).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from selfsup.errors import DatasetError
from selfsup.pipeline.dataset import DatasetInfo

OFFSET_BITS = 40  # a position key is (shard number << 40) | data offset: shards up to 1 TiB


@dataclass
class SplitPositions:
    """The position of every sample of one split, looked up by (shard, image data offset)."""

    split: str
    shard_numbers: dict[str, int]  # shard path as DALI is given it, and its real path -> its number
    keys: np.ndarray  # (N,) int64 sorted position keys; a key's place in this array is its position
    labels: np.ndarray | None  # (N,) int32 label per position, when asked for
    _resolved: dict[str, int] = field(default_factory=dict)  # paths met in source_info -> number

    @property
    def count(self) -> int:
        return len(self.keys)

    def shard_number(self, path: str) -> int:
        """The number of the shard at `path` in the split (a staged copy found by its real path)."""
        number = self._resolved.get(path)
        if number is None:
            number = self.shard_numbers.get(path, self.shard_numbers.get(os.path.realpath(path)))
            if number is None:
                raise DatasetError(f"{path}: DALI read a shard that is not listed in split {self.split!r}")
            self._resolved[path] = number
        return number

    def positions(self, source_info: torch.Tensor) -> torch.Tensor:
        """(B, L) uint8 zero-padded 'TAR:OFFSET:MEMBER' strings -> (B,) int64 positions in the split."""
        rows = source_info.cpu().numpy()
        wanted = np.empty(len(rows), dtype=np.int64)
        for row_number, row in enumerate(rows):
            path, offset, _ = bytes(row).rstrip(b"\0").decode().rsplit(":", 2)
            wanted[row_number] = (self.shard_number(path) << OFFSET_BITS) | int(offset)
        places = np.searchsorted(self.keys, wanted)
        found = (places < len(self.keys)) & (self.keys[np.minimum(places, len(self.keys) - 1)] == wanted)
        if not found.all():
            missing = bytes(rows[int(np.argmin(found))]).rstrip(b"\0").decode()
            raise DatasetError(f"sample {missing!r} is not listed in the manifest of split {self.split!r}")
        return torch.from_numpy(places)


def read_split_columns(manifest: Path, split: str, columns: list[str]):
    """The manifest's `columns` for the rows of `split`, as a pyarrow Table (nothing else is read)."""
    import pyarrow.parquet as parquet

    try:
        return parquet.read_table(manifest, columns=columns, filters=[("split", "=", split)])
    except (OSError, ValueError) as error:
        raise DatasetError(f"{manifest}: cannot read the manifest ({error})") from error


@functools.lru_cache(maxsize=4)
def _cached_positions(manifest: str, stamp: tuple[int, int], split: str, shards: tuple[str, ...],
                      names: tuple[str, ...], count: int, with_labels: bool) -> SplitPositions:
    import pyarrow
    import pyarrow.compute as compute

    table = read_split_columns(Path(manifest), split, ["shard", "offset"] + (["label"] if with_labels else []))
    if table.num_rows != count:
        raise DatasetError(f"{manifest}: {table.num_rows} rows of split {split!r}, dataset.json says {count}; "
                           "the dataset is inconsistent (run `selfsup verify`)")
    numbers = compute.index_in(table.column("shard"), value_set=pyarrow.array(names, type=pyarrow.string()))
    if numbers.null_count:
        stray = table.column("shard").filter(compute.is_null(numbers))[0].as_py()
        raise DatasetError(f"{manifest}: a row of split {split!r} names shard {stray!r}, which dataset.json "
                           "does not list for that split")
    keys = (numbers.to_numpy(zero_copy_only=False).astype(np.int64) << OFFSET_BITS) \
        | table.column("offset").to_numpy().astype(np.int64)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    if len(keys) > 1 and not (np.diff(keys) > 0).all():
        raise DatasetError(f"{manifest}: two rows of split {split!r} give the same shard and offset")
    labels = table.column("label").to_numpy().astype(np.int32)[order] if with_labels else None
    shard_numbers = {}
    for number, path in enumerate(shards):
        shard_numbers[path] = number
        shard_numbers.setdefault(os.path.realpath(path), number)
    return SplitPositions(split, shard_numbers, keys, labels)


def split_positions(dataset: DatasetInfo, split: str, *, with_labels: bool = False) -> SplitPositions:
    """The position lookup of `split` (cached while the manifest is unchanged); `with_labels`
    also keeps each position's label (the labels of datasets adopted with `selfsup index`)."""
    info = dataset.split(split)
    manifest = dataset.manifest_path
    try:
        stat = manifest.stat()
    except OSError as error:
        raise DatasetError(f"{manifest}: missing ({error.strerror}); the loader needs it to number the "
                           "samples") from error
    names = tuple(shard.relative_to(dataset.root).as_posix() for shard in info.shards)
    return _cached_positions(str(manifest), (stat.st_mtime_ns, stat.st_size), split,
                             tuple(str(shard) for shard in info.shards), names, info.count, with_labels)
