"""Test helpers that read a converted dataset back and check that it is whole."""

from __future__ import annotations

import json
from pathlib import Path

import webdataset

from selfsup.pipeline.dataset import read_manifest
from selfsup.pipeline.verify import verify


def shard_samples(output: Path) -> list[dict]:
    """Every sample of every shard in OUT, read back with the webdataset library."""
    description = json.loads((output / "dataset.json").read_text())
    urls = [str(output / shard) for split in description["splits"].values() for shard in split["shards"]]
    return list(webdataset.WebDataset(urls, shardshuffle=False))


def check_complete(source_files: list[str], output: Path) -> None:
    """Every source image exactly once in manifest and shards, unique keys, nothing partial, verify ok."""
    rows = read_manifest(output / "manifest.parquet")
    assert sorted(row["source"] for row in rows) == sorted(source_files)
    assert len({row["key"] for row in rows}) == len(rows)
    samples = shard_samples(output)
    assert sorted(sample["__key__"] for sample in samples) == sorted(row["key"] for row in rows)
    assert sorted(json.loads(sample["json"])["source"] for sample in samples) == sorted(source_files)
    assert not list(output.rglob("*.partial"))
    report = verify(output)
    assert report.ok, report.problems
