"""`index`: adopt WebDataset shards made elsewhere (img2dataset, the Hub, `webdataset.ShardWriter`) in place.

`selfsup index SHARDS` reads every `*.tar` under the folder SHARDS (subfolders included, hidden
ones not) and writes beside them, never modifying a tar file:

- `NAME.idx` for every `NAME.tar` that keeps a sample: a DALI v1.2 index listing each kept
  sample's image member only (an existing `.idx` is replaced). DALI reads by the index, so a
  sample it leaves out is never read;
- `manifest.parquet`: one row per kept sample (`source` is its image member's name);
- `errors.jsonl`: one `{"path": "NAME.tar:MEMBER", "reason": ...}` per excluded sample;
- `dataset.json`, last, with `"origin": "index"` and, when labeled, `"label_source": "manifest"`:
  the loader then takes each sample's label from the manifest by its position.

What a sample is, and which member is its image: `pipeline.index_scan`. Excluded, and listed: a
sample whose image does not decode fully, one without an image member, a key repeated after
other samples, a member name with whitespace, the part of a tar after it becomes unreadable,
and, in a labeled set, a sample without a label.

Labels: the `.cls` members (a class index in ASCII digits), or with `label_field` that top-level
field of each `.json` member (class indices, or class names, which become sorted classes). The set
is labeled when any sample carries a label; `unlabeled=True` ignores them (every image kept).

Splits: a shard set made elsewhere has none, so every shard is `train` unless
`split_patterns` ({"val": "*validation*"}: glob patterns on the shard's path under SHARDS) or
`val_fraction` (the last round(fraction * shards) shards in sorted order, whole shards, since a
tar has one index) says otherwise.

Indexing a folder again (other options, shards added) replaces what an earlier `index` wrote;
its dataset.json goes first, so a folder is never described by files that disagree. Interrupted,
the same call goes on: each scanned shard is recorded in `SHARDS/.selfsup-index/` (with the tar's
size and mtime) and not read again.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from selfsup.errors import DatasetError
from selfsup.files import write_atomically
from selfsup.pipeline.dataset import DATASET_FILE, ERRORS_FILE, SPLIT_NAMES, write_dataset_files
from selfsup.pipeline.index_scan import scan_shard
from selfsup.pipeline.shards import format_index

STATE_FOLDER = ".selfsup-index"
ORIGIN = "index"


@dataclass
class IndexSummary:
    """What one `index` call found and wrote."""

    root: Path
    labeled: bool
    classes: list[str]
    label_source: str  # ".cls members", "json field 'label'" or "none"
    counts: dict[str, int]
    shards: dict[str, list[str]]
    excluded: list[dict] = field(default_factory=list)  # {"path", "reason"}
    empty_shards: list[str] = field(default_factory=list)  # tars left out: no sample kept
    seconds: float = 0.0
    scanned: int = 0  # shards read in this call (the others were recorded by an interrupted one)

    @property
    def images_per_second(self) -> float:
        return sum(self.counts.values()) / self.seconds if self.seconds > 0 else 0.0


def find_shards(root: Path) -> list[str]:
    """The `*.tar` files under `root`, relative and '/'-separated, sorted; hidden folders skipped."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        found.extend((Path(folder) / name).relative_to(root).as_posix() for name in files
                     if name.endswith(".tar") and not name.startswith("."))
    return sorted(found)


def assign_splits(shards: list[str], split_patterns: dict[str, str], val_fraction: float) -> dict[str, str]:
    """shard -> split: `split_patterns` (split -> glob), else the last shards as val, else all train."""
    for split in split_patterns:
        if split not in SPLIT_NAMES:
            raise DatasetError(f"--split-pattern {split}=...: unknown split {split!r}; expected one of "
                               f"{', '.join(SPLIT_NAMES)}")
    if split_patterns and val_fraction:
        raise DatasetError("give --split-pattern or --val-fraction, not both")
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction {val_fraction!r}: expected a number in [0, 1)")
    splits = {shard: "train" for shard in shards}
    if val_fraction:
        if len(shards) < 2:
            raise DatasetError(f"--val-fraction holds out whole shards and there is only {len(shards)}; "
                               "use --split-pattern, or convert the images with `selfsup convert --val-fraction`")
        held_out = min(len(shards) - 1, max(1, round(val_fraction * len(shards))))
        splits.update({shard: "val" for shard in shards[-held_out:]})
    for shard in shards:
        matched = [split for split, pattern in split_patterns.items() if fnmatch.fnmatchcase(shard, pattern)]
        if len(matched) > 1:
            raise DatasetError(f"{shard}: matches the patterns of splits {matched}; make them exclusive")
        if matched:
            splits[shard] = matched[0]
    if split_patterns and "train" not in splits.values():
        raise DatasetError(f"every shard matches a --split-pattern ({split_patterns}); no train split is left")
    return splits


def _check_root(root: Path) -> None:
    """SHARDS must be a folder, and may hold a dataset.json only if an earlier `index` wrote it."""
    if not root.is_dir():
        raise DatasetError(f"{root}: {'not a folder' if root.exists() else 'no such folder'} "
                           "(expected a folder of WebDataset .tar shards)")
    description = root / DATASET_FILE
    if description.is_file():
        try:
            found = json.loads(description.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if not isinstance(found, dict) or "format_version" not in found:
            raise DatasetError(f"{description}: a file that selfsup did not write; `index` writes its "
                               "dataset.json there, so move this one away first")
        if found.get("origin") != ORIGIN:
            raise DatasetError(f"{description}: {root} already holds a dataset that `index` did not write "
                               "(a `selfsup convert` output is ready to use as it is)")


def _record_path(state: Path, shard: str) -> Path:
    return state / (hashlib.sha1(shard.encode("utf-8")).hexdigest()[:16] + ".json")


def _stamp(root: Path, shard: str, label_field: str | None) -> list:
    stat = (root / shard).stat()
    return [shard, stat.st_size, stat.st_mtime_ns, label_field]


def _scan_all(root: Path, shards: list[str], label_field: str | None, workers: int, progress: bool) -> int:
    """Scan every shard without a current record in the state folder; returns how many were scanned."""
    state = root / STATE_FOLDER
    state.mkdir(exist_ok=True)
    todo = []
    for shard in shards:
        path = _record_path(state, shard)
        try:
            current = json.loads(path.read_text(encoding="utf-8")).get("stamp") == _stamp(root, shard, label_field)
        except (OSError, ValueError, AttributeError):
            current = False
        if not current:
            todo.append(shard)
    from tqdm import tqdm

    bar = tqdm(total=len(shards), initial=len(shards) - len(todo), unit="shard", desc="index",
               disable=not progress, dynamic_ncols=True)
    arguments = ([str(root)] * len(todo), todo, [label_field] * len(todo))
    if workers <= 1 or len(todo) < 2:
        results = map(scan_shard, *arguments)
        executor = None
    else:
        executor = ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"))
        results = executor.map(scan_shard, *arguments)
    try:
        for shard, record in zip(todo, results):
            record["stamp"] = _stamp(root, shard, label_field)
            write_atomically(_record_path(state, shard), json.dumps(record).encode("utf-8"), sync_parent=False)
            bar.update(1)
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
    return len(todo)


def _records(root: Path, shards: list[str]):
    """The scan record of each shard, read back one at a time."""
    for shard in shards:
        yield json.loads(_record_path(root / STATE_FOLDER, shard).read_text(encoding="utf-8"))


def _classes(root: Path, shards: list[str], unlabeled: bool) -> tuple[bool, list[str]]:
    """(labeled, classes) from every kept sample's label: indices 0..max, or the sorted names."""
    if unlabeled:
        return False, []
    numbers, names = set(), set()
    for record in _records(root, shards):
        for sample in record["samples"]:
            label = sample[6]
            if isinstance(label, str):
                names.add(label)
            elif label is not None:
                numbers.add(label)
    if numbers and names:
        raise DatasetError(f"{root}: the labels mix class indices ({min(numbers)}, ...) and class names "
                           f"({sorted(names)[0]!r}, ...); give a label field that holds one kind")
    if names:
        return True, sorted(names)
    return (True, [str(number) for number in range(max(numbers) + 1)]) if numbers else (False, [])


def _kept_rows(root: Path, shards: list[str], splits: dict[str, str], labeled: bool, classes: list[str],
               excluded: list[dict], empty: list[str]):
    """For each shard (in the order given): write its `.idx`, yield its manifest rows; collect the
    excluded samples and the shards left without any."""
    class_index = {name: number for number, name in enumerate(classes)}
    for record in _records(root, shards):
        shard = record["shard"]
        excluded.extend({"path": f"{shard}:{member}", "reason": reason} for member, reason in record["excluded"])
        if record["problem"]:
            excluded.append({"path": shard, "reason": record["problem"]})
        entries, rows = [], []
        for key, ext, offset, size, width, height, label, why, crc in record["samples"]:
            if labeled and label is None:
                excluded.append({"path": f"{shard}:{key}.{ext}", "reason": f"no label: {why}"})
                continue
            number = -1 if not labeled else (class_index[label] if isinstance(label, str) else label)
            entries.append((key, {ext: (offset, size)}))
            rows.append({"key": key, "split": splits[shard], "shard": shard, "offset": offset, "bytes": size,
                         "label": number, "width": width, "height": height, "source": f"{key}.{ext}",
                         "crc32": crc})
        if not entries:
            empty.append(shard)
            continue
        write_atomically((root / shard).with_suffix(".idx"), format_index(entries).encode("utf-8"), sync_parent=False)
        yield from rows


def index(shards_folder: str | Path, *, label_field: str | None = None, unlabeled: bool = False,
          split_patterns: dict[str, str] | None = None, val_fraction: float = 0.0, workers: int | None = None,
          progress: bool = True) -> IndexSummary:
    """Adopt the WebDataset shards under `shards_folder` in place (see the module docstring)."""
    started = time.monotonic()
    root = Path(shards_folder).expanduser().resolve()
    _check_root(root)
    shards = find_shards(root)
    if not shards:
        raise DatasetError(f"{root}: no .tar files found (expected WebDataset shards, e.g. 00000.tar)")
    splits = assign_splits(shards, dict(split_patterns or {}), val_fraction)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DatasetError(f"workers {workers!r}: expected a positive integer or None")
    (root / DATASET_FILE).unlink(missing_ok=True)  # an earlier index of this folder: no longer true once .idx change
    scanned = _scan_all(root, shards, label_field, workers, progress)
    labeled, classes = _classes(root, shards, unlabeled)
    ordered = [shard for split in SPLIT_NAMES for shard in shards if splits[shard] == split]
    excluded: list[dict] = []
    empty: list[str] = []
    options = {"label_field": label_field, "unlabeled": unlabeled, "split_patterns": dict(split_patterns or {}),
               "val_fraction": float(val_fraction)}
    fingerprint = hashlib.sha256(json.dumps([_stamp(root, shard, label_field) for shard in shards] + [options],
                                            sort_keys=True).encode("utf-8")).hexdigest()
    label_source = "none" if not labeled else (f"json field {label_field!r}" if label_field else ".cls members")
    extra = {"origin": ORIGIN, "label_source": "manifest" if labeled else "none", "labels_from": label_source}
    write_dataset_files(root, source=root, fingerprint=fingerprint, options=options, labeled=labeled,
                        classes=classes, splits=[split for split in SPLIT_NAMES if split in splits.values()],
                        rows=_kept_rows(root, ordered, splits, labeled, classes, excluded, empty),
                        errors=excluded, extra=extra)
    shutil.rmtree(root / STATE_FOLDER, ignore_errors=True)
    description = json.loads((root / DATASET_FILE).read_text(encoding="utf-8"))
    if not description["splits"]:
        (root / DATASET_FILE).unlink()
        raise DatasetError(f"{root}: none of the {len(shards)} shards holds a usable sample; see {root / ERRORS_FILE}")
    return IndexSummary(root=root, labeled=labeled, classes=classes, label_source=label_source,
                        counts={name: split["count"] for name, split in description["splits"].items()},
                        shards={name: split["shards"] for name, split in description["splits"].items()},
                        excluded=excluded, empty_shards=empty, seconds=time.monotonic() - started, scanned=scanned)


def format_index_summary(summary: IndexSummary, shown: int = 10) -> str:
    """The console lines: counts per split, labels, each excluded sample (the first `shown`), speed."""
    total = sum(summary.counts.values())
    kind = f"labeled from {summary.label_source}, {len(summary.classes)} classes" if summary.labeled else "unlabeled"
    lines = [f"indexed {summary.root} in place (tar files untouched)", f"  images: {total} ({kind})"]
    for split, count in summary.counts.items():
        shards = summary.shards[split]
        lines.append(f"  {split}: {count} images in {len(shards)} shard{'s' if len(shards) != 1 else ''}")
    if summary.excluded:
        count = len(summary.excluded)
        lines.append(f"  excluded: {count} sample{'s' if count != 1 else ''} (left out of the index and the "
                     f"manifest, never read), listed in {summary.root / ERRORS_FILE}:")
        lines.extend(f"    {error['path']}: {error['reason']}" for error in summary.excluded[:shown])
        if count > shown:
            lines.append(f"    ... and {count - shown} more")
    else:
        lines.append("  excluded: 0")
    if summary.empty_shards:
        lines.append(f"  shards without a usable sample, left out: {', '.join(summary.empty_shards)}")
    lines.append(f"  time: {summary.seconds:.1f} s ({summary.images_per_second:.1f} images/s)")
    return "\n".join(lines)
