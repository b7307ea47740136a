"""`verify`: re-read a converted dataset and report every problem, shard by shard and key by key.

For each shard listed in `dataset.json` it checks: the shard and its `.idx` exist; the index
matches what the tar really contains (keys, members, data offsets, sizes); the tar is complete
(every member's data inside the file, end-of-archive marker present); its samples match the
manifest rows (same keys, image offset, size, checksum, label); every sample has an image, a
`.json` and (when labeled) a `.cls` holding a class index in range; every image decodes fully
with PIL to the manifest's size; in a dataset converted with masks, every sample's `.seg.png`
decodes to a label map of its image's size (`segmentation_masks.mask_problem`); and the counts
match `dataset.json`. A dataset adopted with
`selfsup index` is checked against its own contract: its `.idx` lists a subset of each tar's
samples (the excluded ones are in the tar, never read), only the image members, exactly the
manifest's rows (`check_adopted_shard`).

The manifest is read one row group at a time (`pipeline.manifest_reader`): only the shard being
checked has its rows in memory, so memory does not grow with the dataset.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from selfsup.pipeline.damaged import cls_problem
from selfsup.pipeline.dataset import MANIFEST_FILE, read_description
from selfsup.pipeline.manifest_reader import ManifestRuns

from selfsup.errors import DatasetError
from selfsup.pipeline.segmentation_masks import MASK_MEMBER, mask_problem
from selfsup.pipeline.shards import END_OF_ARCHIVE, IMAGE_EXTENSIONS, TAR_BLOCK, read_index_entries, split_member_name


@dataclass(frozen=True)
class Problem:
    """One thing wrong: in which shard (or file), for which sample key (None: the whole shard)."""

    shard: str
    key: str | None
    message: str


@dataclass
class VerifyReport:
    """Everything `verify` found; `ok` when nothing."""

    root: Path
    problems: list[Problem] = field(default_factory=list)
    samples_checked: int = 0
    shards_checked: int = 0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def add(self, shard: str, key: str | None, message: str) -> None:
        """Record one problem."""
        self.problems.append(Problem(shard, key, message))


def _tar_samples(path: Path, report: VerifyReport) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """(key, {ext: (data offset, size)}) per sample in tar order, as far as the tar is readable."""
    shard = path.name
    file_size = path.stat().st_size
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    end = 0
    try:
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                end = member.offset_data + -(-member.size // TAR_BLOCK) * TAR_BLOCK
                if not member.isreg():
                    continue
                key, ext = split_member_name(member.name)
                if member.offset_data + member.size > file_size:
                    report.add(shard, key, f"member {member.name} ends at byte {member.offset_data + member.size}"
                                           f" but the file has {file_size} bytes (truncated shard)")
                    continue
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][ext] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError) as error:
        where = f"after byte {end}" if end else "from the start"
        report.add(shard, None, f"truncated or corrupt tar: unreadable {where} ({error})")
        return samples
    if file_size < end + END_OF_ARCHIVE or file_size % TAR_BLOCK:
        report.add(shard, None, f"truncated: {file_size} bytes, expected the members ({end} bytes) "
                                f"followed by the {END_OF_ARCHIVE}-byte end-of-archive marker")
    else:
        with open(path, "rb") as handle:
            handle.seek(end)
            if handle.read(END_OF_ARCHIVE).strip(b"\0"):
                report.add(shard, None, f"unreadable tar header at byte {end}: the members after it are lost")
    return samples


def _check_index(path: Path, samples: list, report: VerifyReport) -> None:
    """Compare the shard's `.idx` with what the tar contains."""
    index_path = path.with_suffix(".idx")
    if not index_path.is_file():
        report.add(path.name, None, f"index {index_path.name} is missing (DALI cannot read this shard)")
        return
    try:
        entries = read_index_entries(index_path)
    except DatasetError as error:
        report.add(path.name, None, f"index {index_path.name} is malformed: {error}")
        return
    indexed, actual = dict(entries), dict(samples)
    if len(entries) != len(samples):
        report.add(path.name, None, f"index {index_path.name} lists {len(entries)} samples, "
                                    f"the tar holds {len(samples)}")
    for key, components in actual.items():
        if key not in indexed:
            report.add(path.name, key, f"sample is in the tar but not in {index_path.name}")
        elif indexed[key] != components:
            report.add(path.name, key, f"{index_path.name} says {indexed[key]}, the tar holds {components}")
    for key in indexed.keys() - actual.keys():
        report.add(path.name, key, f"sample is in {index_path.name} but not in the tar")


def _check_sample(handle, shard: str, key: str, components: dict, row: dict | None, labeled: bool,
                  class_count: int, report: VerifyReport, mask_classes: int | None = None) -> None:
    """Check one sample's members against its manifest row and decode its image."""
    def read(ext: str) -> bytes:
        """The data of the sample's member with extension `ext`."""
        offset, size = components[ext]
        handle.seek(offset)
        return handle.read(size)

    images = [ext for ext in components if ext in IMAGE_EXTENSIONS]
    if len(images) != 1:
        report.add(shard, key, f"expected exactly one image member, found {images or 'none'}")
        return
    image_ext = images[0]
    if "json" not in components:
        report.add(shard, key, "missing the .json member")
    else:
        try:
            json.loads(read("json").decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            report.add(shard, key, f".json member is not valid UTF-8 JSON ({error})")
    if labeled:
        if "cls" not in components:
            report.add(shard, key, "missing the .cls member (the dataset is labeled)")
        else:
            data = read("cls")
            text, problem = data.decode("ascii", errors="replace"), cls_problem(data, class_count)
            if problem is not None:
                report.add(shard, key, problem)
            elif row is not None and int(text) != row["label"]:
                report.add(shard, key, f".cls is {text}, the manifest says label {row['label']}")
    decoded = _check_image(handle, shard, key, image_ext, components[image_ext], row, report)
    if mask_classes is not None and decoded is not None:
        problem = mask_problem(read(MASK_MEMBER) if MASK_MEMBER in components else None, decoded, mask_classes)
        if problem is not None:
            report.add(shard, key, problem)


def _check_image(handle, shard: str, key: str, ext: str, place: tuple[int, int], row: dict | None,
                 report: VerifyReport) -> tuple[int, int] | None:
    """The image member at `place` (data offset, size) against its manifest row; it must decode fully.
    Returns the decoded (width, height), None when it does not decode."""
    offset, size = place
    handle.seek(offset)
    data = handle.read(size)
    if row is not None:
        if (row["offset"], row["bytes"]) != (offset, size):
            report.add(shard, key, f"image {key}.{ext} is at offset {offset} with {size} bytes, the "
                                   f"manifest says offset {row['offset']} with {row['bytes']} bytes")
        elif row.get("crc32") is not None and zlib.crc32(data) != row["crc32"]:
            report.add(shard, key, f"image {key}.{ext} bytes differ from the manifest checksum "
                                   "(the shard was modified or corrupted)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            decoded = image.size
    except Exception as error:  # PIL raises many types for corrupt data
        report.add(shard, key, f"image {key}.{ext} does not decode ({type(error).__name__}: {error})")
        return None
    if row is not None and decoded != (row["width"], row["height"]):
        report.add(shard, key, f"image decodes to {decoded[0]}x{decoded[1]}, the manifest says "
                               f"{row['width']}x{row['height']}")
    return decoded


def _check_shard(path: Path, rows: dict[str, dict] | None, labeled: bool, class_count: int,
                 report: VerifyReport, mask_classes: int | None = None) -> int:
    """Check one shard; returns how many samples it holds."""
    shard = path.name
    if not path.is_file():
        report.add(shard, None, "shard file is missing")
        return 0
    samples = _tar_samples(path, report)
    report.shards_checked += 1
    _check_index(path, samples, report)
    keys = [key for key, _ in samples]
    for key, times in Counter(keys).items():
        if times > 1:
            report.add(shard, key, f"key appears in {times} separate places in the tar")
    if rows is not None:
        for key in sorted(rows.keys() - set(keys)):
            report.add(shard, key, "sample is in the manifest but not in the shard (lost or truncated)")
        for key in sorted(set(keys) - rows.keys()):
            report.add(shard, key, "sample is in the shard but not in the manifest")
    with open(path, "rb") as handle:
        for key, components in samples:
            row = rows.get(key) if rows is not None else None
            _check_sample(handle, shard, key, components, row, labeled, class_count, report, mask_classes)
            report.samples_checked += 1
    return len(samples)


MANIFEST_CHECKED = ["key", "split", "shard", "offset", "bytes", "label", "width", "height", "crc32"]


def _check_counts(description: dict, manifest: ManifestRuns | None, found: Counter, report: VerifyReport) -> None:
    """Each split's sample count in its shards and its manifest rows, and its class counts, against dataset.json."""
    class_count = len(description["classes"])
    for name, split in description["splits"].items():
        if found[name] != split.get("count"):
            report.add("dataset.json", None, f"split {name!r}: dataset.json says {split.get('count')} samples, "
                                             f"its shards hold {found[name]}")
        if manifest is None:
            continue
        rows = manifest.split_rows.get(name, 0)
        if rows != split.get("count"):
            report.add(MANIFEST_FILE, None, f"split {name!r}: {rows} manifest rows, "
                                            f"dataset.json says {split.get('count')}")
        counts = manifest.class_counts(name, class_count)
        if description["labeled"] and counts != list(split.get("class_counts", [])):
            report.add("dataset.json", None, f"split {name!r}: class_counts {split.get('class_counts')} "
                                             f"differ from the manifest's {counts}")


def verify(output: str | Path, *, progress: bool = False) -> VerifyReport:
    """Check a converted (or `selfsup index`-adopted) dataset folder; never raises on corrupt data
    (see the module docstring).

    Raises DatasetError only when OUT itself is unusable (no folder, no readable dataset.json).
    """
    root = Path(output).expanduser().resolve()
    description = read_description(root)
    report = VerifyReport(root=root)
    labeled, class_count = description["labeled"], len(description["classes"])
    adopted = description.get("origin") == "index"
    mask_classes = (description.get("segmentation") or {}).get("classes")
    manifest = None
    try:
        manifest = ManifestRuns(root / MANIFEST_FILE, MANIFEST_CHECKED)
    except DatasetError as error:
        report.add(MANIFEST_FILE, None, str(error))
    listed = {shard for split in description["splits"].values() for shard in split.get("shards", [])}
    for shard in sorted((manifest.runs if manifest is not None else {}).keys() - listed):
        rows = sum(count for _, count in manifest.runs[shard])
        report.add(shard, None, f"{rows} manifest rows name this shard, dataset.json does not")
    work = [(name, shard) for name, split in description["splits"].items() for shard in split.get("shards", [])]
    from tqdm import tqdm

    found = Counter()
    for name, shard in tqdm(work, desc="verify", unit="shard", disable=not progress):
        rows = {row["key"]: row for row in manifest.rows(shard)} if manifest is not None else None
        if adopted:
            found[name] += check_adopted_shard(root / shard, rows, labeled, class_count, report)
        else:
            found[name] += _check_shard(root / shard, rows, labeled, class_count, report, mask_classes)
    _check_counts(description, manifest, found, report)
    return report


def check_adopted_shard(path: Path, rows: dict[str, dict] | None, labeled: bool, class_count: int,
                        report: VerifyReport) -> int:
    """Check one shard adopted by `selfsup index`: its `.idx` lists a subset of the tar's samples (the
    others were excluded), each at the place the tar holds it, exactly the manifest's rows; each
    listed image decodes. Returns how many samples the index lists."""
    shard = path.relative_to(report.root).as_posix()
    if not path.is_file():
        report.add(shard, None, "shard file is missing")
        return 0
    tar_problems = VerifyReport(root=report.root)  # a tar's unreadable tail was excluded by `index`, and listed then
    members = {f"{key}.{ext}": place for key, components in _tar_samples(path, tar_problems)
               for ext, place in components.items()}
    report.shards_checked += 1
    index_path = path.with_suffix(".idx")
    try:
        entries = read_index_entries(index_path)
    except DatasetError as error:
        report.add(shard, None, f"index {index_path.name}: {error}")
        return 0
    if rows is not None:
        for key in sorted(rows.keys() - {key for key, _ in entries}):
            report.add(shard, key, f"sample is in the manifest but not in {index_path.name}")
    with open(path, "rb") as handle:
        for key, components in entries:
            ext, (offset, size) = next(iter(components.items()))
            if members.get(f"{key}.{ext}") != (offset, size):
                report.add(shard, key, f"{index_path.name} says {key}.{ext} is at offset {offset} with {size} "
                                       f"bytes, the tar holds {members.get(f'{key}.{ext}', 'no such member')}")
                continue
            row = rows.get(key) if rows is not None else None
            if rows is not None and row is None:
                report.add(shard, key, "sample is in the index but not in the manifest")
            elif row is not None and labeled and not 0 <= row["label"] < class_count:
                report.add(shard, key, f"manifest label {row['label']}, expected a class index in 0..{class_count - 1}")
            _check_image(handle, shard, key, ext, (offset, size), row, report)
            report.samples_checked += 1
    return len(entries)


def format_report(report: VerifyReport) -> str:
    """Console lines: a one-line verdict, then each problem grouped by shard."""
    head = (f"{report.root}: {report.samples_checked} sample{'s' if report.samples_checked != 1 else ''} in "
            f"{report.shards_checked} shard{'s' if report.shards_checked != 1 else ''} checked")
    if report.ok:
        return f"{head}, no problems"
    lines = [f"{head}, {len(report.problems)} problem{'s' if len(report.problems) != 1 else ''}:"]
    by_shard: dict[str, list[Problem]] = {}
    for problem in report.problems:
        by_shard.setdefault(problem.shard, []).append(problem)
    for shard, problems in by_shard.items():
        lines.append(f"  {shard}:")
        lines.extend(f"    {problem.key + ': ' if problem.key else ''}{problem.message}" for problem in problems)
    return "\n".join(lines)
