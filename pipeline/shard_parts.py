"""Which shard files a rank's part of a split covers, and an index that hands DALI exactly that part.

How DALI's `fn.readers.webdataset` splits a split into parts (DALI 2.x, `loader.h`,
`webdataset_loader.cc`): it lists the samples of every `.idx` file, in the order of `paths`,
one after the other (N in all), and part `p` of `P` (`shard_id=p, num_shards=P`) is the samples
at positions `N * p // P` up to `N * (p + 1) // P`. The reader starts at the beginning of its
part; with `random_shuffle`, each returned sample is drawn from the samples of the current pass
over the part only (DALI never mixes two passes in its shuffle buffer), so the first
`N * (p + 1) // P - N * p // P` samples it returns are a permutation of its part that depends on
the seed and the part's samples alone. (It reads on past the end of its part, into the next one,
to keep its buffer full; those reads only matter for the samples returned after a whole pass.)

DALI maps every tar file it is given when the pipeline is built, part or no part (checked with
DALI 2.4: a reader of part 0 of 2 fails to build when a shard of part 1 is missing). A node that
has only some shards on disk therefore cannot give the reader the whole list. Instead it gives
the reader the files its part covers, with the part's first and last file described by a trimmed
copy of their index (the part's samples of that file only, at their original tar offsets), and
`shard_id=0, num_shards=1`. That reader's first pass is the part, sample for sample in the same
order, so with the same seed and shuffle buffer it returns the same samples in the same order as
the reader over the whole list for all of the trainer's epoch (an epoch never takes more samples
than the smallest part holds). See `tests/pipeline/test_staging.py`.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from selfsup.pipeline.shards import INDEX_VERSION, index_lines


def part_bounds(total: int, part: int, parts: int) -> tuple[int, int]:
    """[start, stop) positions of part `part` of `parts` over `total` samples, as DALI cuts them."""
    return total * part // parts, total * (part + 1) // parts


@dataclass(frozen=True)
class FileSpan:
    """The samples [first, stop) of one shard (`count` samples in all) that a part reads."""

    shard: Path
    index: Path
    first: int
    stop: int
    count: int

    @property
    def whole(self) -> bool:
        return self.first == 0 and self.stop == self.count


def part_spans(shards: list[Path], counts: list[int], part: int, parts: int) -> list[FileSpan]:
    """The files (in reading order) that part `part` of `parts` covers, and which of their samples.

    `counts[i]`: the number of samples in `shards[i]`'s index."""
    start, stop = part_bounds(sum(counts), part, parts)
    spans, offset = [], 0
    for shard, count in zip(shards, counts):
        first, last = max(start, offset), min(stop, offset + count)
        if first < last:
            spans.append(FileSpan(Path(shard), Path(shard).with_suffix(".idx"), first - offset,
                                  last - offset, count))
        offset += count
    return spans


def write_part_indexes(spans: list[FileSpan], folder: Path) -> list[str]:
    """Index paths for DALI, one per span: a whole file's own `.idx`, or a trimmed copy in `folder`.

    The copies depend only on the spans, so ranks that write the same one concurrently write the
    same bytes (each through its own temporary file and a rename)."""
    paths = []
    for span in spans:
        if span.whole:
            paths.append(str(span.index))
            continue
        target = folder / f"{span.shard.stem}-{span.first}-{span.stop}.idx"
        if not target.exists():
            lines = index_lines(span.index)[span.first:span.stop]
            folder.mkdir(parents=True, exist_ok=True)
            temporary = folder / f".{target.name}.{uuid.uuid4().hex}.partial"
            temporary.write_text(f"{INDEX_VERSION} {len(lines)}\n" + "\n".join(lines) + "\n", encoding="utf-8")
            os.replace(temporary, target)
        paths.append(str(target))
    return paths
