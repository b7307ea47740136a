"""Damage a converted dataset the way another tool or a bad disk would: bytes of an image
overwritten, an image member emptied, a `.cls` member that is no class index. The tar stays
readable; only `selfsup verify` (and now the loader) can tell."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

from selfsup.pipeline.dataset import read_manifest
from selfsup.pipeline.shards import format_index, split_member_name


def copy_dataset(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def overwrite_image(dataset: Path, row_number: int, data: bytes = b"garbage!") -> dict:
    """Overwrite the start of the image of manifest row `row_number` (same size: the tar and its
    index stay valid); that row."""
    row = read_manifest(dataset / "manifest.parquet")[row_number]
    shard = dataset / row["shard"]
    content = bytearray(shard.read_bytes())
    content[row["offset"]:row["offset"] + len(data)] = data
    shard.write_bytes(bytes(content))
    return row


def rewrite_member(shard: Path, key: str, ext: str, data: bytes) -> None:
    """Replace member KEY.EXT of `shard` with `data` (any size), rewriting the tar and its `.idx`."""
    members = []
    with tarfile.open(shard) as tar:
        for info in tar.getmembers():
            content = tar.extractfile(info).read()
            members.append((info.name, data if info.name == f"{key}.{ext}" else content))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    shard.write_bytes(buffer.getvalue())
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(shard) as tar:
        for info in tar.getmembers():
            sample_key, sample_ext = split_member_name(info.name)
            samples.setdefault(sample_key, {})[sample_ext] = (info.offset_data, info.size)
    shard.with_suffix(".idx").write_text(format_index(list(samples.items())), encoding="utf-8")


def last_row_of_a_shard(dataset: Path, split: str = "train") -> dict:
    """The manifest row of the last sample of the split's first shard: changing its size moves no
    other sample's offset (the manifest's offsets stay right)."""
    rows = [row for row in read_manifest(dataset / "manifest.parquet") if row["split"] == split]
    first_shard = rows[0]["shard"]
    return max((row for row in rows if row["shard"] == first_shard), key=lambda row: row["offset"])
