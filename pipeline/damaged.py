"""Samples a loader cannot use: finding them in the shards DALI reads, and reading around them.

DALI stops a pipeline on the first image its decoder rejects with "Critical error in pipeline",
naming neither the shard nor the sample. When that happens the loader looks for the culprit
itself: it walks the `.idx` entries of the samples the failing reader covers (one rank's part of
a split, or the few batches an in-order reader was about to hand out), reads each image member
at its recorded offset and decodes it with Pillow, and checks each `.cls` member against the
class list. What it finds becomes a `DamagedSamplesError` (a user error: one line naming the
shard and the key and pointing to `selfsup verify`), or, for a run with `data.skip_corrupt`,
the samples to leave out: `indexes_without` writes copies of the reader's `.idx` files without
their lines (the shards are not touched), which DALI then reads instead.

A damaged sample is named by its shard's file name and its image member's data offset, which
stay the same whether DALI reads the dataset folder or a node's staged copy of it.
"""

from __future__ import annotations

import io
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from selfsup.errors import DamagedSamplesError
from selfsup.pipeline.shards import IMAGE_EXTENSIONS, INDEX_VERSION, index_lines, read_index_entries


@dataclass(frozen=True)
class DamagedSample:
    shard: str  # the shard's path, as the reader was given it
    key: str
    offset: int  # the image member's data offset in the tar
    reason: str

    @property
    def name(self) -> tuple[str, int]:
        """(shard file name, image data offset): the sample, wherever the shard was read from."""
        return os.path.basename(self.shard), self.offset


def part_range(count: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """The samples [start, stop) that DALI's reader with `shard_id` of `num_shards` covers."""
    return count * shard_id // num_shards, count * (shard_id + 1) // num_shards


def _image_problem(data: bytes) -> str | None:
    if not data:
        return "the image member is empty"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except UnidentifiedImageError:
        return "the image member is in no image format Pillow recognises"
    except Exception as error:  # Pillow raises many types for corrupt data
        return f"the image does not decode ({type(error).__name__}: {error})"
    return None


def cls_problem(data: bytes, class_count: int) -> str | None:
    """What is wrong with a `.cls` member's bytes, or None when they are a class index in
    0..class_count-1 (the check of `selfsup verify` and of the loader)."""
    text = data.decode("ascii", errors="replace")
    if not text.isdigit() or int(text) >= class_count:
        return f".cls is {text!r}, expected a class index in 0..{class_count - 1}"
    return None


def _check_shard(shard: str, entries: list, class_count: int | None, images: bool) -> list[DamagedSample]:
    found = []
    with open(shard, "rb") as handle:
        def member(place: tuple[int, int]) -> bytes:
            handle.seek(place[0])
            return handle.read(place[1])

        for key, components in entries:
            image_ext = next((ext for ext in components if ext in IMAGE_EXTENSIONS), None)
            if image_ext is None:
                continue  # the reader fails on such a sample before decoding; `selfsup verify` names it
            problem = _image_problem(member(components[image_ext])) if images else None
            if problem is None and class_count is not None:
                problem = (cls_problem(member(components["cls"]), class_count) if "cls" in components
                           else "missing the .cls member (the dataset is labeled)")
            if problem is not None:
                found.append(DamagedSample(shard, key, components[image_ext][0], problem))
    return found


def find_damaged(shards: list[str], indexes: list[str], start: int = 0, stop: int | None = None, *,
                 class_count: int | None = None, images: bool = True,
                 threads: int | None = None) -> list[DamagedSample]:
    """The damaged samples among samples [start, stop) of the shards, numbered in reading order
    (the shards in order, each one's `.idx` lines in order). Images are decoded when `images`;
    `.cls` members are checked when `class_count` is given."""
    work = []
    position = 0
    for shard, index in zip(shards, indexes):
        entries = read_index_entries(index)
        end = position + len(entries)
        low, high = max(start, position), end if stop is None else min(stop, end)
        if low < high:
            work.append((shard, entries[low - position:high - position]))
        position += len(entries)
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:  # Pillow decodes without the GIL
        results = pool.map(lambda item: _check_shard(item[0], item[1], class_count, images), work)
        return [sample for found in results for sample in found]


def damaged_error(found: list[DamagedSample], root: Path, split: str) -> DamagedSamplesError:
    """One line: the first damaged sample, how many more there are, and what to do."""
    first = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return DamagedSamplesError(
        f"{first.shard}: sample {first.key} of split {split!r}: {first.reason}{more}; "
        f"`selfsup verify {root}` lists every damaged sample, and a training run with "
        "--set data.skip_corrupt=true leaves them out", found)


def indexes_without(shards: list[str], indexes: list[str], excluded: frozenset[tuple[str, int]],
                    folder: Path) -> tuple[list[str], list[str]]:
    """(shards, indexes) for a reader that leaves out the `excluded` samples (shard file name,
    image data offset): each affected `.idx` copied into `folder` without those samples' lines.
    A shard left with no sample is dropped."""
    kept_shards, kept_indexes = [], []
    for shard, index in zip(shards, indexes):
        name = os.path.basename(shard)
        if not any(shard_name == name for shard_name, _ in excluded):
            kept_shards.append(shard)
            kept_indexes.append(index)
            continue
        lines = [line for line, (_, components) in zip(index_lines(index), read_index_entries(index))
                 if (name, _image_offset(components)) not in excluded]
        if not lines:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / Path(index).name
        temporary = folder / f".{target.name}.{uuid.uuid4().hex}.partial"
        temporary.write_text(f"{INDEX_VERSION} {len(lines)}\n" + "\n".join(lines) + "\n", encoding="utf-8")
        os.replace(temporary, target)
        kept_shards.append(shard)
        kept_indexes.append(str(target))
    return kept_shards, kept_indexes


def _image_offset(components: dict[str, tuple[int, int]]) -> int | None:
    return next((place[0] for ext, place in components.items() if ext in IMAGE_EXTENSIONS), None)


def sample_count(indexes: list[str]) -> int:
    return sum(len(index_lines(index)) for index in indexes)
