"""A subset of a split's samples as a dataset the loaders read: the labels of a split in reading
order, and trimmed DALI indexes that list only the chosen samples.

A split's samples are numbered by their place in the split's sorted keys (as `pipeline.positions` numbers
the samples of a converted dataset),
which is also their order in the shards, the `.idx` files and the manifest. `split_labels` gives
the class of every position; `subset_dataset` writes, for each shard holding a chosen sample, a
copy of its `.idx` with only those samples' lines (their tar offsets unchanged), into a folder of
the caller's, and returns a `DatasetInfo` whose split is exactly those samples: `build_train_loader`
and `build_eval_loader` then read the subset and nothing else, from the original shards.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path

import numpy as np

from selfsup.errors import DatasetError
from selfsup.pipeline.dataset import MANIFEST_FILE, DatasetInfo, SplitInfo
from selfsup.pipeline.shards import INDEX_VERSION, index_lines, split_member_name


def split_labels(dataset: DatasetInfo, split: str) -> np.ndarray:
    """(N,) int64 class index of every sample of `split`, in reading order (sorted keys), from
    the manifest; -1 for an unlabeled dataset."""
    import pyarrow.compute as compute
    import pyarrow.parquet as parquet

    info = dataset.split(split)
    path = dataset.root / MANIFEST_FILE
    try:
        table = parquet.read_table(path, columns=["key", "split", "label"])
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read the manifest's key, split and label columns ({error})") from error
    table = table.filter(compute.equal(table["split"], split))
    keys = np.asarray(table["key"].to_pylist())
    labels = np.asarray(table["label"].to_numpy(zero_copy_only=False), dtype=np.int64)
    if len(keys) != info.count:
        raise DatasetError(f"{path}: {len(keys)} rows of split {split!r}, dataset.json says {info.count}; "
                           f"run `selfsup verify {dataset.root}`")
    return labels[np.argsort(keys, kind="stable")]


def subset_dataset(dataset: DatasetInfo, split: str, positions, folder: str | Path) -> DatasetInfo:
    """`dataset` with `split` cut down to the samples at `positions` (places in the split's reading
    order), through trimmed indexes written into `folder`; every other split is left out.
    The samples keep their reading order (the order of `positions` does not matter)."""
    info = dataset.split(split)
    chosen = np.unique(np.asarray(positions, dtype=np.int64))
    if len(chosen) == 0:
        raise DatasetError(f"{dataset.root}: an empty subset of split {split!r}")
    if chosen[0] < 0 or chosen[-1] >= info.count:
        raise DatasetError(f"{dataset.root}: subset positions must lie in 0..{info.count - 1} (split "
                           f"{split!r}), got {int(chosen[0])}..{int(chosen[-1])}")
    per_shard = [(shard, index, index_lines(index)) for shard, index in zip(info.shards, info.indexes)]
    keys = np.sort(np.asarray([int(split_member_name(line.split()[3])[0])
                               for _, _, lines in per_shard for line in lines], dtype=np.int64))
    wanted = set(keys[chosen].tolist())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards, indexes = [], []
    for shard, index, lines in per_shard:
        kept = [line for line in lines if int(split_member_name(line.split()[3])[0]) in wanted]
        if not kept:
            continue
        target = folder / index.name
        temporary = folder / f".{index.name}.{uuid.uuid4().hex}.partial"
        temporary.write_text(f"{INDEX_VERSION} {len(kept)}\n" + "\n".join(kept) + "\n", encoding="utf-8")
        os.replace(temporary, target)
        shards.append(shard)
        indexes.append(target)
    subset = SplitInfo(split, len(chosen), tuple(shards), tuple(indexes), ())
    manifest = _write_subset_manifest(dataset, split, wanted, folder)
    return dataclasses.replace(dataset, splits={split: subset}, manifest=manifest)


def _write_subset_manifest(dataset: DatasetInfo, split: str, wanted: set[int], folder: Path) -> Path:
    """The manifest rows of the chosen samples, written atomically into `folder`: the loader numbers
    a split's samples by its manifest (`pipeline.positions`), which must list exactly the subset."""
    import pyarrow
    import pyarrow.compute as compute
    import pyarrow.parquet as parquet

    source = dataset.manifest_path
    try:
        table = parquet.read_table(source)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{source}: cannot read the manifest ({error})") from error
    table = table.filter(compute.equal(table["split"], split))
    keys = np.asarray([int(key) for key in table["key"].to_pylist()], dtype=np.int64)
    table = table.filter(pyarrow.array(np.isin(keys, np.fromiter(wanted, dtype=np.int64))))
    target = folder / MANIFEST_FILE
    temporary = folder / f".{MANIFEST_FILE}.{uuid.uuid4().hex}.partial"
    parquet.write_table(table, temporary)
    os.replace(temporary, target)
    return target
