"""`convert`: an image folder -> WebDataset shards, a manifest and `dataset.json` (crash-safe, resumable).

What it reads, what it writes and how it resumes are described in `convert`'s docstring; the
on-disk format is described in `pipeline/dataset.py`, the shard format in `pipeline/shards.py`.
How each image is checked and stored is in `prepare_image`; which images are read, in what order
and with which split and key is in `pipeline/convert_plan.py`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from selfsup.pipeline.compact_plan import CompactPlan
from selfsup.pipeline.convert_plan import KEY_DIGITS, SPLITS, PlanItem, is_hidden, scan_source, source_fingerprint
from selfsup.files import write_atomically
from selfsup.pipeline.dataset import (
    DATASET_FILE, ERRORS_FILE, FORMAT_VERSION, is_dataset_file, shard_name, write_dataset_files,
)
from selfsup.errors import DatasetError
from selfsup.pipeline.images import prepare_image
from selfsup.pipeline.shards import IMAGE_EXTENSIONS, ShardWriter, parse_size

STATE_FOLDER = ".selfsup-convert"
PLAN_FILE = "plan.json"


@dataclass
class ConvertSummary:
    """What one `convert` call did (or found already done)."""

    source: Path
    output: Path
    labeled: bool
    classes: list[str]
    counts: dict[str, int]
    skipped: int
    shards: dict[str, list[str]]
    seconds: float
    images_per_second: float
    errors_path: Path
    resumed: bool = False
    already_complete: bool = False
    processed: int = 0  # images read in this call


def _refuse(output: Path, why: str) -> DatasetError:
    """The error for an OUT folder that holds something other than this conversion."""
    return DatasetError(f"{output}: {why}; convert into a new or empty folder (or delete this one)")


def _check_output(output: Path, fingerprint: str) -> str:
    """'complete', 'resume' or 'fresh' for OUT; a DatasetError when OUT holds something else."""
    if output.exists() and not output.is_dir():
        raise DatasetError(f"{output}: exists and is not a folder; choose a folder for the shards")
    if not output.exists():
        return "fresh"
    foreign = sorted(entry.name for entry in output.iterdir()
                     if not is_hidden(entry.name) and not is_dataset_file(entry.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise _refuse(output, f"holds files that `selfsup convert` did not write ({shown})")
    for path, what in ((output / DATASET_FILE, "a finished conversion"),
                       (output / STATE_FOLDER / PLAN_FILE, "an unfinished conversion")):
        if path.is_file():
            try:
                found = json.loads(path.read_text(encoding="utf-8")).get("fingerprint")
            except (OSError, ValueError, AttributeError):
                found = None
            if found != fingerprint:
                raise _refuse(output, f"holds {what} of a different dataset or options ({path.name} "
                                      "fingerprint differs; the source files may have changed)")
            return "complete" if path.name == DATASET_FILE else "resume"
    if any(not is_hidden(entry.name) for entry in output.iterdir()):
        raise _refuse(output, "holds shard files but no record of the conversion that wrote them")
    return "fresh"


def _load_records(state: Path, plan_counts: dict[str, int]) -> dict[str, list[dict]]:
    """The completed-shard records per split (without their rows: see `_record_rows`), checked to
    cover a prefix of each split in order."""
    records = {split: [] for split in SPLITS}
    for path in sorted(state.glob("*-*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            records[record["split"]].append({**record, "rows": None, "path": path})
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DatasetError(f"{path}: unreadable shard record ({error!r}); delete the output folder "
                               "and convert again") from error
    for split, items in records.items():
        items.sort(key=lambda record: record["start"])
        stop = 0
        for record in items:
            if record["start"] != stop or record["stop"] > plan_counts.get(split, 0):
                raise DatasetError(f"{state}: shard records of split {split!r} do not cover the plan in "
                                   "order; delete the output folder and convert again")
            stop = record["stop"]
    return records


def _record_rows(records: list[dict]) -> Iterator[dict]:
    """The manifest rows of completed-shard records, read back one record file at a time."""
    for record in records:
        yield from json.loads(record["path"].read_text(encoding="utf-8"))["rows"]


class _SplitWriter:
    """Writes one split's shards in plan order and a state record after each finished shard."""

    def __init__(self, output: Path, split: str, shard_size: int, records: list[dict]):
        """Continue after the split's completed-shard `records` (none for a fresh run)."""
        self.output, self.split, self.shard_size = output, split, shard_size
        self.state = output / STATE_FOLDER
        self.start = records[-1]["stop"] if records else 0  # split-local index of the next item
        self.next_shard = sum(1 for record in records if record["shard"])
        self.writer: ShardWriter | None = None
        self.rows: list[dict] = []
        self.errors: list[dict] = []

    def add(self, local_index: int, item: PlanItem, result: dict) -> None:
        """Store one prepared image (or record its error), starting a new shard when this one is full."""
        if "reason" in result:
            self.errors.append({"path": item.relative, "reason": result["reason"]})
            return
        files = {result["ext"]: result["data"]}
        if item.label >= 0:
            files["cls"] = str(item.label).encode("ascii")
        files["json"] = json.dumps({"source": item.relative, "width": result["width"],
                                    "height": result["height"],
                                    "original_width": result["original_width"],
                                    "original_height": result["original_height"]},
                                   ensure_ascii=False).encode("utf-8")
        if self.writer is not None and self.writer.projected_size(files) > self.shard_size:
            self.close_shard(local_index)
        if self.writer is None:
            self.writer = ShardWriter(self.output / shard_name(self.split, self.next_shard))
        self.writer.write_sample(item.key, files)
        offset, size = self.writer.samples[-1][1][result["ext"]]
        self.rows.append({"key": item.key, "split": self.split, "shard": self.writer.path.name,
                          "offset": offset, "bytes": size, "label": item.label, "width": result["width"],
                          "height": result["height"], "source": item.relative, "crc32": result["crc32"]})

    def close_shard(self, stop: int) -> None:
        """Finish the open shard (if any) and record the plan items [start, stop) as done."""
        shard = None
        if self.writer is not None:
            shard = self.writer.finish().name
            self.writer, self.next_shard = None, self.next_shard + 1
        elif not self.errors:
            return
        record = {"split": self.split, "shard": shard, "start": self.start, "stop": stop,
                  "rows": self.rows, "errors": self.errors}
        write_atomically(self.state / f"{self.split}-{self.start:0{KEY_DIGITS}d}.json",
                         json.dumps(record).encode("utf-8"), sync_parent=False)  # lost record: shard redone
        self.start, self.rows, self.errors = stop, [], []

    def abort(self) -> None:
        """Remove the open shard's partial file, also when an interrupt came while it was being
        opened (the file exists, `self.writer` is not assigned yet)."""
        if self.writer is not None:
            self.writer.abort()
        opening = self.output / shard_name(self.split, self.next_shard)
        for path in (opening, opening.with_suffix(".idx")):
            path.with_name(path.name + ".partial").unlink(missing_ok=True)


def _ignore_interrupts() -> None:
    """Pool initializer: Ctrl-C is handled by the main process alone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _prepare_chunk(tasks: list[tuple[str, str, int | None]]) -> list[dict]:
    """prepare_image for each (root, relative, max_side) task (one pool job)."""
    return [prepare_image(*task) for task in tasks]


def _prepared_in_order(tasks: list[tuple[str, str, int | None]], workers: int) -> Iterator[dict]:
    """Yield prepare_image results in task order, from spawned worker processes.

    At most 3 chunks per worker are in flight, so memory stays bounded however slow the
    writing is; a worker that dies (e.g. killed for memory) raises BrokenProcessPool, not a hang.
    """
    if workers <= 1 or len(tasks) < 2:
        for task in tasks:
            yield prepare_image(*task)
        return
    chunk_size = max(1, min(32, len(tasks) // (workers * 4)))
    chunks = (tasks[start:start + chunk_size] for start in range(0, len(tasks), chunk_size))
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_ignore_interrupts)
    try:
        pending = deque(executor.submit(_prepare_chunk, chunk) for _, chunk in zip(range(3 * workers), chunks))
        while pending:
            results = pending.popleft().result()
            for chunk in chunks:
                pending.append(executor.submit(_prepare_chunk, chunk))
                break
            yield from results
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


# tasks -> prepare_image(*task) for each task, yielded in task order. The default is a local process
# pool (`_prepared_in_order`); `cluster/convert_tasks.py` has one that spreads chunks over Ray tasks.
MapInOrder = Callable[[list[tuple[str, str, int | None]]], Iterator[dict]]


def convert(source: str | Path, output: str | Path, *, shard_size: int | str = "256MB",
            max_side: int | None = None, val_fraction: float = 0.0, workers: int | None = None,
            seed: int = 0, progress: bool = True, map_in_order: MapInOrder | None = None) -> ConvertSummary:
    """Convert the image folder SRC into WebDataset shards in OUT; resumes an interrupted run.

    Layout: class folders (`SRC/cat/*.jpg`, `SRC/dog/x/y.png`, ...) give a labeled dataset
    whose classes are the sorted top-level folder names; images directly in SRC make it a flat,
    unlabeled dataset of every image at any depth (see `scan_source`). Accepted: .jpg .jpeg
    .png .webp .bmp .tif .tiff in any case; hidden and other files are ignored.

    Every image is fully decoded once; unreadable ones are skipped and listed in
    `OUT/errors.jsonl`. Images DALI decodes as they are keep their bytes; the others are
    re-encoded (see `prepare_image`). The sorted candidates are shuffled with
    `seed`; the first round(val_fraction*N) form the "val" split, the rest "train"; a sample's key
    is its place in that shuffle. Shards `OUT/{split}-NNNNNN.tar` (+ `.idx`) stay under
    `shard_size` unless one sample alone is larger.

    Interrupted at any point, the same call finishes the job: completed shards are recorded in
    `OUT/.selfsup-convert/`, partial files are deleted, and work goes on after the last
    completed shard. `OUT/dataset.json`, written last, marks completion; calling again then
    does nothing (`already_complete=True`). A different dataset in OUT is refused.

    `map_in_order` (optional) replaces the local worker processes for reading the images, e.g.
    with tasks on a cluster; the outputs are the same, since writing stays here and in order.
    """
    started = time.monotonic()
    source, output = Path(source).expanduser().resolve(), Path(output).expanduser().resolve()
    if not source.is_dir():
        raise DatasetError(f"{source}: {'not a folder' if source.exists() else 'no such folder'} "
                           "(expected a folder of images or of class folders)")
    try:
        shard_bytes = parse_size(shard_size)
    except ValueError as error:
        raise DatasetError(f"shard_size: {error}") from error
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise DatasetError(f"max_side {max_side!r}: expected a positive number of pixels or None")
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise DatasetError(f"val_fraction {val_fraction!r}: expected a number in [0, 1)")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DatasetError(f"workers {workers!r}: expected a positive integer or None")

    files, labeled, classes = scan_source(source, exclude=output)
    if not files:
        looked_for = ", ".join("." + extension for extension in IMAGE_EXTENSIONS)
        raise DatasetError(f"{source}: no images found (looked for {looked_for} "
                           "files, hidden ones excluded)")
    options = {"shard_size": shard_bytes, "max_side": max_side, "val_fraction": float(val_fraction), "seed": seed}
    fingerprint = source_fingerprint(source, files, options)
    status = _check_output(output, fingerprint)
    if status == "complete":
        return _summary_from_description(output, started)

    plan = CompactPlan.build(files, classes, val_fraction, seed)  # no object per image (pipeline/compact_plan.py)
    del files  # the plan holds the paths, compactly
    counts = {split: plan.count(split) for split in SPLITS}
    state = output / STATE_FOLDER
    if status == "fresh":
        shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True, exist_ok=True)
    if status == "fresh":
        write_atomically(state / PLAN_FILE, json.dumps({
            "format_version": FORMAT_VERSION, "fingerprint": fingerprint, "source": str(source),
            "options": options, "labeled": labeled, "classes": classes,
            "counts": counts}).encode("utf-8"))
    for folder in (output, state):
        for partial in folder.glob("*.partial"):
            partial.unlink()
    records = _load_records(state, counts)
    recorded_shards = {record["shard"] for items in records.values() for record in items if record["shard"]}
    for entry in output.iterdir():  # final shards written after the last record: rewritten below
        if is_dataset_file(entry.name) and entry.suffix in (".tar", ".idx") \
                and entry.with_suffix(".tar").name not in recorded_shards:
            entry.unlink()

    writers = {split: _SplitWriter(output, split, shard_bytes, records[split]) for split in SPLITS}
    starts = {split: writers[split].start for split in SPLITS}
    remaining = plan.remaining(starts)
    tasks = plan.tasks(str(source), max_side, starts)
    from tqdm import tqdm

    bar = tqdm(total=len(plan), initial=len(plan) - len(tasks), unit="img", desc="convert",
               disable=not progress, dynamic_ncols=True)
    results = map_in_order(tasks) if map_in_order is not None else _prepared_in_order(tasks, workers)
    try:
        current = None
        for (split, index, item), result in zip(remaining, results):
            if current is not None and split != current:
                writers[current].close_shard(counts[current])
            current = split
            writers[split].add(index, item, result)
            bar.update(1)
        for split in SPLITS:
            writers[split].close_shard(counts[split])
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        if hasattr(results, "close"):
            results.close()  # stops the worker pool (or the cluster's tasks)
        bar.close()
    records = _load_records(state, counts)
    present = [split for split in ("train", "val") if records[split]]
    write_dataset_files(
        output, source=source, fingerprint=fingerprint, options=options, labeled=labeled, classes=classes,
        splits=present, rows=_record_rows([record for split in present for record in records[split]]),
        errors=[error for split in SPLITS for record in records[split] for error in record["errors"]])
    shutil.rmtree(state, ignore_errors=True)
    summary = _summary_from_description(output, started)
    summary.already_complete, summary.resumed, summary.processed = False, status == "resume", len(tasks)
    summary.images_per_second = len(tasks) / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _summary_from_description(output: Path, started: float) -> ConvertSummary:
    """A summary of the finished conversion in OUT (already_complete=True until the caller says otherwise)."""
    description = json.loads((output / DATASET_FILE).read_text(encoding="utf-8"))
    shutil.rmtree(output / STATE_FOLDER, ignore_errors=True)
    splits = description["splits"]
    return ConvertSummary(
        source=Path(description["source"]), output=output, labeled=description["labeled"],
        classes=list(description["classes"]), counts={name: split["count"] for name, split in splits.items()},
        skipped=description["skipped"], shards={name: list(split["shards"]) for name, split in splits.items()},
        seconds=time.monotonic() - started, images_per_second=0.0, errors_path=output / ERRORS_FILE,
        already_complete=True)


def format_summary(summary: ConvertSummary) -> str:
    """The console lines for a summary: counts, skipped files, shards, speed."""
    if summary.already_complete:
        lines = [f"{summary.output}: already converted from {summary.source} (nothing to do)"]
    else:
        lines = [f"converted {summary.source} -> {summary.output}"
                 + (" (resumed an interrupted run)" if summary.resumed else "")]
    kind = f"labeled, {len(summary.classes)} classes" if summary.labeled else "unlabeled"
    lines.append(f"  images: {sum(summary.counts.values())} ({kind})")
    for split, count in summary.counts.items():
        shards = summary.shards.get(split, [])
        span = f"{shards[0]} .. {shards[-1]}" if len(shards) > 1 else (shards[0] if shards else "none")
        lines.append(f"  {split}: {count} images in {len(shards)} shard{'s' if len(shards) != 1 else ''} ({span})")
    if summary.skipped:
        lines.append(f"  skipped: {summary.skipped} unreadable file{'s' if summary.skipped != 1 else ''}, "
                     f"see {summary.errors_path}")
    else:
        lines.append("  skipped: 0")
    if not summary.already_complete:
        lines.append(f"  time: {summary.seconds:.1f} s ({summary.images_per_second:.1f} images/s)")
    return "\n".join(lines)
