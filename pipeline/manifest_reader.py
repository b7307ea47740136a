"""`manifest.parquet` read one row group at a time: each shard's rows on demand, each split's counts.

`verify` needs, shard by shard, that shard's manifest rows as dicts, and, per split, the number of
rows and of rows per class. Reading the whole table for that (even as columns, even sorted by
shard) cost about 0.4 KiB of resident memory per row in pyarrow's buffers and allocator: +40 MiB
at 100k images, +4 GiB at 10M. `ManifestRuns` makes one pass over the row groups reading three
small columns (the shard and split as dictionary codes, the label) to find where each shard's rows
are (runs of consecutive rows: one per shard in a manifest written by selfsup, more in one
edited by hand) and to count; `rows(shard)` then reads only the row groups that hold that shard.
Memory: a row group (8192 rows as written now, 65536 in older manifests) and one shard's rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selfsup.errors import DatasetError


def _codes_and_names(column) -> tuple[np.ndarray, list]:
    """A dictionary-encoded (or plain) pyarrow column -> (int codes per row, the value of each code)."""
    import pyarrow

    chunks = column.chunks if isinstance(column, pyarrow.ChunkedArray) else [column]
    names: list = []
    codes = []
    for chunk in chunks:
        if not pyarrow.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_encode()
        values = chunk.dictionary.to_pylist()
        remap = np.asarray([len(names) + number for number in range(len(values))], dtype=np.int64)
        names.extend(values)
        codes.append(remap[chunk.indices.to_numpy(zero_copy_only=False)] if len(chunk) else np.zeros(0, np.int64))
    return (np.concatenate(codes) if codes else np.zeros(0, np.int64)), names


class ManifestRuns:
    """Where each shard's rows lie in a manifest, and each split's row and class counts."""

    def __init__(self, path: str | Path, columns: list[str]):
        import pyarrow.parquet as parquet

        self.path, self.columns = Path(path), columns
        try:
            self.file = parquet.ParquetFile(self.path, read_dictionary=["shard", "split"])
            self.group_starts = np.cumsum([0] + [self.file.metadata.row_group(number).num_rows
                                                 for number in range(self.file.num_row_groups)])
            self.runs: dict[str, list[tuple[int, int]]] = {}
            self.split_rows: dict[str, int] = {}
            self.split_labels: dict[str, dict[int, int]] = {}
            for number in range(self.file.num_row_groups):
                self._count(number, self.file.read_row_group(number, columns=["shard", "split", "label"]))
        except (OSError, ValueError, KeyError) as error:
            raise DatasetError(f"{self.path}: cannot read the manifest ({error})") from error
        self._cached: tuple[int, object] | None = None

    def _count(self, number: int, table) -> None:
        """Add one row group's runs of shards, split row counts and per-split label counts."""
        first_row = int(self.group_starts[number])
        codes, names = _codes_and_names(table.column("shard"))
        if len(codes):
            starts = np.flatnonzero(np.diff(codes, prepend=-1))
            for start, stop in zip(starts, np.append(starts[1:], len(codes))):
                shard, runs = names[codes[start]], self.runs.setdefault(names[codes[start]], [])
                if runs and runs[-1][0] + runs[-1][1] == first_row + start:  # continues across row groups
                    runs[-1] = (runs[-1][0], runs[-1][1] + int(stop - start))
                else:
                    runs.append((first_row + int(start), int(stop - start)))
        split_codes, split_names = _codes_and_names(table.column("split"))
        labels = table.column("label").to_numpy()
        for code, split in enumerate(split_names):
            chosen = split_codes == code
            self.split_rows[split] = self.split_rows.get(split, 0) + int(chosen.sum())
            counts = self.split_labels.setdefault(split, {})
            for label, count in zip(*np.unique(labels[chosen], return_counts=True)):
                counts[int(label)] = counts.get(int(label), 0) + int(count)

    def _group(self, number: int):
        if self._cached is None or self._cached[0] != number:
            self._cached = (number, self.file.read_row_group(number, columns=self.columns))
        return self._cached[1]

    def rows(self, shard: str) -> list[dict]:
        """The manifest rows of `shard` as dicts (of `columns`), in manifest order."""
        found = []
        for first, count in self.runs.get(shard, []):
            stop = first + count
            for number in range(int(np.searchsorted(self.group_starts, first, side="right")) - 1,
                                len(self.group_starts) - 1):
                group_first, group_stop = int(self.group_starts[number]), int(self.group_starts[number + 1])
                if group_first >= stop:
                    break
                low, high = max(first, group_first), min(stop, group_stop)
                found.extend(self._group(number).slice(low - group_first, high - low).to_pylist())
        return found

    def class_counts(self, split: str, class_count: int) -> list[int]:
        """Rows of `split` per class index in 0..class_count-1 (other labels are not counted)."""
        counts = self.split_labels.get(split, {})
        return [counts.get(label, 0) for label in range(class_count)]
