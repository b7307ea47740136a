"""`convert`: an image folder -> WebDataset shards, a manifest and `dataset.json` (crash-safe, resumable).

What it reads, what it writes and how it resumes are described in `convert`'s docstring; the
on-disk format is described in `pipeline/dataset.py`, the shard format in `pipeline/shards.py`.
Which entries of SRC are read or skipped is in `pipeline/source_scan.py`; in what order and with
which split and key in `pipeline/convert_plan.py`; how each image is checked and stored in
`prepare_image` (`pipeline/images.py`), by the worker processes of `pipeline/convert_workers.py`;
what OUT may hold and how its shards and records are written in `pipeline/convert_output.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from selfsup.errors import DatasetError
from selfsup.files import write_atomically
from selfsup.locks import hold_folder_lock
from selfsup.pipeline.convert_output import (PLAN_FILE, STATE_FOLDER, SplitWriter, check_output,
                                             describe_write_failure, load_records, record_rows,
                                             remove_leftovers)
from selfsup.pipeline.compact_plan import CompactPlan
from selfsup.pipeline.convert_plan import SPLITS, PlanItem, source_fingerprint
from selfsup.pipeline.convert_workers import Task, prepared_in_order
from selfsup.pipeline.dataset import ERRORS_FILE, FORMAT_VERSION, read_description, write_dataset_files
from selfsup.pipeline.segmentation_masks import attach_masks, check_masks_folder, segmentation_info
from selfsup.pipeline.shards import IMAGE_EXTENSIONS, parse_size
from selfsup.pipeline.source_scan import SourceScan, display_name, scan_source

LOCK_PURPOSE = "selfsup convert"


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


# tasks -> prepare_image(*task) for each task, yielded in task order. The default is the local worker
# pool (`pipeline/convert_workers.py`); `cluster/convert_tasks.py` has one that spreads chunks over Ray tasks.
MapInOrder = Callable[[list[Task]], Iterator[dict]]


def _checked_options(shard_size: int | str, max_side: int | None, val_fraction: float,
                     workers: int | None) -> tuple[int, int]:
    """The shard size in bytes and the number of workers; a DatasetError naming a bad value."""
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
    return shard_bytes, workers


def _find_images(source: Path, output: Path) -> SourceScan:
    """The scan of SRC; a DatasetError when it is no folder or holds no image that can be read."""
    if not source.is_dir():
        raise DatasetError(f"{source}: {'not a folder' if source.exists() else 'no such folder'} "
                           "(expected a folder of images or of class folders)")
    scan = scan_source(source, exclude=output)
    if not scan.candidates:
        looked_for = ", ".join("." + extension for extension in IMAGE_EXTENSIONS)
        unread = ""
        if scan.skipped:
            first = scan.skipped[0]
            unread = (f"; {len(scan.skipped)} {'entry' if len(scan.skipped) == 1 else 'entries'} could not "
                      f"be read, e.g. {display_name(first.relative)}: {first.reason}")
        raise DatasetError(f"{source}: no images found (looked for {looked_for} files, hidden ones "
                           f"excluded{unread})")
    return scan


def convert(source: str | Path, output: str | Path, *, shard_size: int | str = "256MB",
            max_side: int | None = None, val_fraction: float = 0.0, workers: int | None = None,
            seed: int = 0, progress: bool = True, map_in_order: MapInOrder | None = None,
            masks: str | Path | None = None) -> ConvertSummary:
    """Convert the image folder SRC into WebDataset shards in OUT; resumes an interrupted run.

    Layout: class folders (`SRC/cat/*.jpg`, `SRC/dog/x/y.png`, ...) give a labeled dataset
    whose classes are the sorted top-level folder names; images directly in SRC make it a flat,
    unlabeled dataset of every image at any depth (see `scan_source`). Accepted: regular files
    named .jpg .jpeg .png .webp .bmp .tif .tiff in any case; hidden and other files are ignored;
    symlinks are followed.

    Every image is fully decoded once. Whatever cannot be read is skipped and listed in
    `OUT/errors.jsonl` (and counted in the summary): files that do not decode, folders that
    cannot be listed, broken symlinks and symlink loops, FIFOs and devices named like images. A
    class folder that cannot be listed stops the conversion instead (the labels would shift).
    Images DALI decodes as they are keep their bytes; the others are
    re-encoded (see `prepare_image`). The sorted candidates are shuffled with
    `seed`; the first round(val_fraction*N) form the "val" split, the rest "train"; a sample's key
    is its place in that shuffle. Shards `OUT/{split}-NNNNNN.tar` (+ `.idx`) stay under
    `shard_size` unless one sample alone is larger.

    Interrupted at any point, the same call finishes the job: completed shards are recorded in
    `OUT/.selfsup-convert/`, partial files are deleted, and work goes on after the last
    completed shard. `OUT/dataset.json`, written last, marks completion; calling again then
    does nothing (`already_complete=True`). A different dataset in OUT is refused. A write that
    fails (a full or read-only disk) is a DatasetError naming the path and the cause.

    While it writes, the call holds OUT's lock (`selfsup.locks`): a second conversion into the
    same OUT fails at once with a FolderLockedError naming the holder.

    `map_in_order` (optional) replaces the local worker processes for reading the images, e.g.
    with tasks on a cluster; the outputs are the same, since writing stays here and in order.

    `masks` (optional): a folder of PNG label maps mirroring SRC; each sample then carries its mask
    as `KEY.seg.png` (see `pipeline/segmentation_masks.py`).
    """
    started = time.monotonic()
    source, output = Path(source).expanduser().resolve(), Path(output).expanduser().resolve()
    shard_bytes, workers = _checked_options(shard_size, max_side, val_fraction, workers)
    masks = check_masks_folder(masks, source)
    scan = _find_images(source, output)
    options = {"shard_size": shard_bytes, "max_side": max_side, "val_fraction": float(val_fraction), "seed": seed}
    if masks is not None:
        options["masks"] = str(masks)
    fingerprint = source_fingerprint(source, scan, options)
    if output.exists() and not output.is_dir():
        raise DatasetError(f"{output}: exists and is not a folder; choose a folder for the shards")
    if _already_complete(output, fingerprint):  # reads only: no lock, works in a read-only OUT too
        return _summary_from_description(output, started)
    try:
        output.mkdir(parents=True, exist_ok=True)
        with hold_folder_lock(output, LOCK_PURPOSE):
            status = check_output(output, fingerprint)  # under the lock: another run may have finished
            if status == "complete":
                return _summary_from_description(output, started)
            return _write_conversion(source, output, scan, fingerprint, options, status == "resume",
                                     workers, progress, map_in_order, started)
    except OSError as error:
        raise describe_write_failure(output, error) from error


def _already_complete(output: Path, fingerprint: str) -> bool:
    """Whether OUT holds this very conversion, finished. Any refusal waits for the check under the
    lock, so that a conversion still writing into OUT is what gets named."""
    try:
        return check_output(output, fingerprint) == "complete"
    except (DatasetError, OSError):
        return False


def _write_conversion(source: Path, output: Path, scan: SourceScan, fingerprint: str, options: dict,
                      resume: bool, workers: int, progress: bool, map_in_order: MapInOrder | None,
                      started: float) -> ConvertSummary:
    """Write (or, with `resume`, finish writing) the conversion into OUT, whose lock is held."""
    plan = CompactPlan.build(scan.files, scan.classes, options["val_fraction"], options["seed"])  # no object per image
    scan.candidates.clear()  # the plan holds the paths now: one Candidate object per image less for the whole run
    counts = {split: plan.count(split) for split in SPLITS}
    state = output / STATE_FOLDER
    if not resume:
        shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_atomically(state / PLAN_FILE, json.dumps({
            "format_version": FORMAT_VERSION, "fingerprint": fingerprint, "source": str(source),
            "options": options, "labeled": scan.labeled, "classes": scan.classes, "counts": counts}).encode("utf-8"))
    records = load_records(state, counts)
    remove_leftovers(output, records)
    writers = {split: SplitWriter(output, split, options["shard_size"], records[split]) for split in SPLITS}
    starts = {split: writers[split].start for split in SPLITS}
    tasks = plan.tasks(str(source), options["max_side"], starts)
    results = map_in_order(tasks) if map_in_order is not None else prepared_in_order(tasks, workers)
    masks = Path(options["masks"]) if "masks" in options else None
    if masks is not None:
        results = attach_masks(results, [relative for _, relative, _ in tasks], masks)
    _write_shards(plan.remaining(starts), len(tasks), results, writers, counts, progress)
    records = load_records(state, counts)
    present = [split for split in ("train", "val") if records[split]]
    done = [record for split in present for record in records[split]]
    write_dataset_files(
        output, source=source, fingerprint=fingerprint, options=options, labeled=scan.labeled,
        classes=[display_name(name) for name in scan.classes], splits=present, rows=record_rows(done),
        errors=[entry.record() for entry in scan.skipped]
        + [error for split in SPLITS for record in records[split] for error in record["errors"]],
        extra=segmentation_info(record_rows(done), masks) if masks is not None else None)
    shutil.rmtree(state, ignore_errors=True)
    summary = _summary_from_description(output, started)
    summary.already_complete, summary.resumed, summary.processed = False, resume, len(tasks)
    summary.images_per_second = len(tasks) / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _write_shards(remaining: Iterator[tuple[str, int, PlanItem]], remaining_count: int, results: Iterator[dict],
                  writers: dict[str, SplitWriter], counts: dict[str, int], progress: bool) -> None:
    """Store each remaining plan item's result, split by split, closing each split's last shard;
    on any exception (Ctrl-C included) remove the open shards' partial files and stop the readers."""
    from tqdm import tqdm

    total = sum(counts.values())
    bar = tqdm(total=total, initial=total - remaining_count, unit="img", desc="convert",
               disable=not progress, dynamic_ncols=True)
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


def _summary_from_description(output: Path, started: float) -> ConvertSummary:
    """A summary of the finished conversion in OUT (already_complete=True until the caller says otherwise)."""
    description = read_description(output)
    shutil.rmtree(output / STATE_FOLDER, ignore_errors=True)
    splits = description["splits"]
    return ConvertSummary(
        source=Path(description["source"]), output=output, labeled=description["labeled"],
        classes=list(description["classes"]), counts={name: split["count"] for name, split in splits.items()},
        skipped=description.get("skipped", 0), shards={name: list(split["shards"]) for name, split in splits.items()},
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
        lines.append(f"  skipped: {summary.skipped} unreadable {'entry' if summary.skipped == 1 else 'entries'} "
                     f"(files or folders), see {summary.errors_path}")
    else:
        lines.append("  skipped: 0")
    if not summary.already_complete:
        lines.append(f"  time: {summary.seconds:.1f} s ({summary.images_per_second:.1f} images/s)")
    return "\n".join(lines)
