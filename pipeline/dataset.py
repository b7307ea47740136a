"""A converted dataset on disk: `dataset.json`, `manifest.parquet`, and how to read them.

`selfsup convert SRC OUT` writes into OUT:

- `train-000000.tar`, `train-000001.tar`, ... (and `val-...` when a validation split was asked
  for): WebDataset shards, each with its DALI index `NAME.idx` beside it;
- `manifest.parquet`: one row per sample (see `MANIFEST_COLUMNS`);
- `errors.jsonl`: one `{"path": ..., "reason": ...}` object per source entry that was skipped
  (a file that does not decode, a folder that cannot be listed, a broken symlink, a FIFO, ...);
- `dataset.json`, written last (its presence marks a finished conversion)::

    {"format_version": 1, "source": "/abs/src", "labeled": true, "classes": ["cat", "dog"],
     "fingerprint": "...", "options": {"shard_size": ..., "max_side": ..., "val_fraction": ...,
     "seed": ...}, "skipped": 3,
     "splits": {"train": {"count": N, "shards": ["train-000000.tar"], "class_counts": [n0, n1]}},
     "created": "2024-01-01T00:00:00+00:00"}

This module is the reading side (`load_dataset_info`) plus the few writers that must agree with
it (`write_manifest`, `write_atomically`). It imports no DALI.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from selfsup.errors import DatasetError
from selfsup.files import sync_folder, write_atomically
from selfsup.locks import lock_holder

FORMAT_VERSION = 1
DATASET_FILE = "dataset.json"
MANIFEST_FILE = "manifest.parquet"
ERRORS_FILE = "errors.jsonl"

# name -> pyarrow type name. `offset`/`bytes` locate the image member's data inside its shard;
# `crc32` is the zlib CRC-32 of the stored image bytes (used by `verify`). `source` is the path
# relative to SRC, readable; when that name is not UTF-8, its bytes that are not show as `\xNN`
# and `source_hex` holds the exact name's bytes in hex (null otherwise). The sample's `.json`
# member and `errors.jsonl` (`path`, `path_hex`) store names the same way.
MANIFEST_COLUMNS = {
    "key": "string",
    "split": "string",
    "shard": "string",
    "offset": "int64",
    "bytes": "int64",
    "label": "int32",
    "width": "int32",
    "height": "int32",
    "source": "string",
    "source_hex": "string",
    "crc32": "int64",
}


SPLIT_NAMES = ("train", "val")


def shard_name(split: str, index: int) -> str:
    """'train', 3 -> 'train-000003.tar'."""
    return f"{split}-{index:06d}.tar"


def is_dataset_file(name: str) -> bool:
    """Whether `name` is one that `convert` writes into OUT (shards, indexes, summaries, temporaries)."""
    base = name[:-len(".partial")] if name.endswith(".partial") else name
    if base in (DATASET_FILE, MANIFEST_FILE, ERRORS_FILE):
        return True
    split, _, rest = base.partition("-")
    return split in SPLIT_NAMES and len(rest) == 10 and rest[:6].isdigit() and rest[6:] in (".tar", ".idx")


@dataclass(frozen=True)
class SplitInfo:
    """One split of a converted dataset: its sample count and shard/index files (absolute)."""

    name: str
    count: int
    shards: tuple[Path, ...]
    indexes: tuple[Path, ...]
    class_counts: tuple[int, ...]


@dataclass(frozen=True)
class DatasetInfo:
    """What `dataset.json` says about a converted dataset folder."""

    root: Path
    labeled: bool
    classes: tuple[str, ...]
    splits: dict[str, SplitInfo]
    format_version: int
    manifest_labels: bool = False  # labels read from manifest.parquet by position (`selfsup index`), not .cls
    manifest: Path | None = None  # where its manifest is when not ROOT/manifest.parquet (a subset's)

    @property
    def manifest_path(self) -> Path:
        return self.manifest if self.manifest is not None else self.root / MANIFEST_FILE

    def split(self, name: str) -> SplitInfo:
        """The split called `name`; a DatasetError naming the available splits otherwise."""
        if name not in self.splits:
            available = ", ".join(repr(split) for split in self.splits) or "none"
            raise DatasetError(f"{self.root}: no split {name!r} in this dataset (available: {available})")
        return self.splits[name]


def read_description(root: str | Path) -> dict:
    """The parsed `ROOT/dataset.json`, checked against its schema (`check_description`); a
    DatasetError naming the file and the key when the folder or the file is unusable."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder (run `selfsup convert SRC {root}` first)")
    path = root / DATASET_FILE
    if not path.is_file():
        holder = lock_holder(root)
        running = (f"; its lock names {holder.describe()}: that conversion is still running or was stopped"
                   if holder else "")
        raise DatasetError(f"{path}: missing; {root} is not a finished conversion{running} "
                           f"(run `selfsup convert SRC {root}` first)")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: not readable JSON ({error})") from error
    check_description(description, path)
    return description


def _is_inside_name(name: object) -> bool:
    """Whether a listed shard name is a relative path to a .tar inside the dataset folder."""
    if not isinstance(name, str) or not name.endswith(".tar") or "\0" in name or "\\" in name:
        return False
    parts = PurePosixPath(name).parts
    return not PurePosixPath(name).is_absolute() and ".." not in parts


def _is_count(value: object) -> bool:
    """A non-negative int (a bool is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_description(description: object, path: str | Path) -> None:
    """A DatasetError naming `path` and the key when a parsed dataset.json does not match its
    schema (the module docstring). Shard names must be relative paths ending in .tar that stay
    inside the dataset folder (no absolute path, no '..'), so no file outside it is ever opened."""
    if not isinstance(description, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(description).__name__}")
    version = description.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise DatasetError(f"{path}: unsupported format_version {version!r} (this selfsup reads "
                           f"version {FORMAT_VERSION}; convert the images again)")

    def expect(key: str, value: object, valid: bool, expected: str) -> None:
        if not valid:
            raise DatasetError(f"{path}: key {key!r} must be {expected}, got {value!r}")

    for key, kind in (("labeled", bool), ("classes", list), ("splits", dict)):
        expect(key, description.get(key), isinstance(description.get(key), kind), f"a {kind.__name__}")
    for key, kind in (("source", str), ("fingerprint", str), ("created", str), ("options", dict)):
        if key in description:
            expect(key, description[key], isinstance(description[key], kind), f"a {kind.__name__}")
    if "skipped" in description:
        expect("skipped", description["skipped"], _is_count(description["skipped"]), "a count (an integer >= 0)")
    classes = description["classes"]
    for index, name in enumerate(classes):
        expect(f"classes[{index}]", name, isinstance(name, str), "a class name (a string)")
    for name, split in description["splits"].items():
        key = f"splits.{name}"
        expect(key, split, isinstance(split, dict), "an object with count, shards and class_counts")
        expect(f"{key}.count", split.get("count"), _is_count(split.get("count")), "a count (an integer >= 0)")
        shards = split.get("shards")
        expect(f"{key}.shards", shards, isinstance(shards, list), "a list of shard file names")
        for index, shard in enumerate(shards):
            expect(f"{key}.shards[{index}]", shard, _is_inside_name(shard),
                   "a shard file name inside the dataset folder (a relative path ending in .tar, without '..')")
        class_counts = split.get("class_counts", [])
        expect(f"{key}.class_counts", class_counts, isinstance(class_counts, list)
               and all(_is_count(value) for value in class_counts)
               and (not class_counts or len(class_counts) == len(classes)),
               f"a list of {len(classes)} counts, one per class")


def load_dataset_info(path: str | Path) -> DatasetInfo:
    """Read `PATH/dataset.json` and check that every shard and `.idx` file it lists exists."""
    root = Path(path).resolve()
    description = read_description(root)
    description_path = root / DATASET_FILE
    splits = {}
    for name, split in description["splits"].items():
        shards = tuple(root / shard for shard in split["shards"])
        indexes = tuple(shard.with_suffix(".idx") for shard in shards)
        for file in shards + indexes:
            if not file.is_file():
                raise DatasetError(f"{file}: missing (listed in {description_path}); the dataset "
                                   f"is incomplete, run `selfsup verify {root}` or convert again")
        splits[name] = SplitInfo(name, split["count"], shards, indexes, tuple(split.get("class_counts", [])))
    return DatasetInfo(root=root, labeled=description["labeled"], classes=tuple(description["classes"]),
                       splits=splits, format_version=description["format_version"],
                       manifest_labels=description.get("label_source") == "manifest")


def write_manifest(path: str | Path, rows: Iterable[dict], *, rows_per_group: int = 4096) -> None:
    """Stream manifest rows (dicts with the keys of MANIFEST_COLUMNS) into a parquet file, atomically.

    Rows are buffered as columns, `rows_per_group` at a time (one parquet row group each), and
    only the few-valued columns (split, shard) are dictionary-encoded: the writer's memory stays
    a few MiB whatever the number of rows (100k rows: +6 MiB over 1k, against +24 MiB with 8192-row
    groups and every column in a dictionary), and the file is a fifth smaller."""
    import pyarrow
    import pyarrow.parquet as parquet

    schema = pyarrow.schema([(name, getattr(pyarrow, kind)()) for name, kind in MANIFEST_COLUMNS.items()])
    path = Path(path)
    temporary = path.with_name(path.name + ".partial")
    with parquet.ParquetWriter(temporary, schema, use_dictionary=["split", "shard"]) as writer:
        columns: dict[str, list] = {name: [] for name in MANIFEST_COLUMNS}
        for row in rows:
            for name, values in columns.items():
                values.append(row.get(name))  # a column a row lacks (source_hex) is null, as from_pylist made it
            if len(columns["key"]) == rows_per_group:
                writer.write_table(pyarrow.Table.from_pydict(columns, schema=schema))
                columns = {name: [] for name in MANIFEST_COLUMNS}
        if columns["key"]:
            writer.write_table(pyarrow.Table.from_pydict(columns, schema=schema))
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    sync_folder(path.parent)


def read_manifest(path: str | Path) -> list[dict]:
    """The rows of a `manifest.parquet` as dicts; a DatasetError when it cannot be read."""
    import pyarrow.parquet as parquet

    try:
        return parquet.read_table(path).to_pylist()
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read the manifest ({error})") from error


def write_dataset_files(output: Path, *, source: Path, fingerprint: str, options: dict, labeled: bool,
                        classes: list[str], splits: list[str], rows: Iterable[dict], errors: list[dict],
                        extra: dict | None = None) -> None:
    """Write OUT's manifest.parquet, errors.jsonl and, last, dataset.json (each atomically).

    `rows` streams every manifest row, split by split in shard order; `splits` names the splits
    to describe, in that order (one left without samples is left out); `errors` holds the {"path", "reason"} objects
    of the skipped files; `extra` holds further dataset.json entries ("segmentation"; `selfsup index`:
    origin, label_source).
    """
    described = {split: {"count": 0, "shards": [], "class_counts": [0] * len(classes)} for split in splits}

    def counted(rows: Iterable[dict]) -> Iterator[dict]:
        """Pass rows through while counting samples, shards and classes per split."""
        for row in rows:
            split = described[row["split"]]
            split["count"] += 1
            if not split["shards"] or split["shards"][-1] != row["shard"]:
                split["shards"].append(row["shard"])
            if row["label"] >= 0:
                split["class_counts"][row["label"]] += 1
            yield row

    write_manifest(output / MANIFEST_FILE, counted(rows))
    write_atomically(output / ERRORS_FILE,
                     "".join(json.dumps(error, ensure_ascii=False) + "\n" for error in errors).encode("utf-8"))
    description = {"format_version": FORMAT_VERSION, "source": str(source), "labeled": labeled,
                   "classes": list(classes), "fingerprint": fingerprint, "options": options,
                   "skipped": len(errors),
                   "splits": {name: split for name, split in described.items() if split["count"]},
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(extra or {})}
    write_atomically(output / DATASET_FILE, (json.dumps(description, indent=2) + "\n").encode("utf-8"))
