"""The output folder of a conversion: what it may hold, the records that make it resumable, and
the writer that fills one split's shards in plan order.

OUT holds only what `convert` writes (shards, indexes, manifest, errors, dataset.json, their
`.partial` temporaries) and hidden entries: the state folder `.selfsup-convert/` (the plan and
one record per completed shard) and the lock file (`selfsup.locks`). A write that fails (a full
or read-only disk) becomes one DatasetError line naming the path and the cause
(`describe_write_failure`); what was written before stays valid, so the same command finishes
the job once the cause is fixed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from selfsup.errors import DatasetError
from selfsup.files import write_atomically
from selfsup.pipeline.convert_plan import KEY_DIGITS, SPLITS, PlanItem
from selfsup.pipeline.dataset import DATASET_FILE, is_dataset_file, shard_name
from selfsup.pipeline.shards import ShardWriter
from selfsup.pipeline.source_scan import is_hidden, name_fields

STATE_FOLDER = ".selfsup-convert"
PLAN_FILE = "plan.json"


def _refuse(output: Path, why: str) -> DatasetError:
    """The error for an OUT folder that holds something other than this conversion."""
    return DatasetError(f"{output}: {why}; convert into a new or empty folder (or delete this one)")


def describe_write_failure(output: Path, error: OSError) -> DatasetError:
    """One line for an OSError met while writing into OUT: the path (OUT when the error names
    none, as a failed write() does not) and the cause, and that running again finishes the job."""
    path = error.filename if error.filename is not None else output
    if error.filename2 is not None:
        path = f"{path} -> {error.filename2}"
    cause = error.strerror or str(error)
    return DatasetError(f"{path}: cannot write the conversion ({cause}); what was written is kept: "
                        "fix this and run the same command again to finish")


def _check_entry_kinds(output: Path) -> None:
    """Refuse entries with the names convert writes that are of the wrong kind (a folder named
    like a shard, a file where the state folder goes): writing them would fail half-way."""
    for entry in output.iterdir():
        if entry.name == STATE_FOLDER and not entry.is_dir():
            raise _refuse(output, f"{entry.name} is not a folder (convert keeps its state there)")
        if is_dataset_file(entry.name) and (entry.is_dir() or not (entry.is_file() or entry.is_symlink())):
            raise _refuse(output, f"{entry.name} is not a regular file (convert writes a file of that name)")


def check_output(output: Path, fingerprint: str) -> str:
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
    _check_entry_kinds(output)
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


def load_records(state: Path, plan_counts: dict[str, int]) -> dict[str, list[dict]]:
    """The completed-shard records per split (without their rows: see `record_rows`), checked to
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


def record_rows(records: list[dict]) -> Iterator[dict]:
    """The manifest rows of completed-shard records, read back one record file at a time."""
    for record in records:
        yield from json.loads(record["path"].read_text(encoding="utf-8"))["rows"]


def remove_leftovers(output: Path, records: dict[str, list[dict]]) -> None:
    """Delete what an interrupted run left that no record covers: `.partial` files, and final
    shards written after the last record (they are rewritten)."""
    for folder in (output, output / STATE_FOLDER):
        for partial in folder.glob("*.partial"):
            partial.unlink()
    recorded = {record["shard"] for items in records.values() for record in items if record["shard"]}
    for entry in output.iterdir():
        if is_dataset_file(entry.name) and entry.suffix in (".tar", ".idx") \
                and entry.with_suffix(".tar").name not in recorded:
            entry.unlink()


class SplitWriter:
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
            self.errors.append({**name_fields(item.relative, "path"), "reason": result["reason"]})
            return
        source = name_fields(item.relative, "source")  # a name that is not UTF-8 also as hex bytes
        files = {result["ext"]: result["data"], **result.get("members", {})}  # members: e.g. a seg.png mask
        if item.label >= 0:
            files["cls"] = str(item.label).encode("ascii")
        files["json"] = json.dumps({**source, "width": result["width"], "height": result["height"],
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
                          "height": result["height"], "source": source["source"],
                          "source_hex": source.get("source_hex"), "crc32": result["crc32"],
                          **result.get("row_fields", {})})

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
            try:
                path.with_name(path.name + ".partial").unlink(missing_ok=True)
            except OSError:  # cleaning up after a failure: the next run removes what is left
                pass
