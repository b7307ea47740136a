"""pipeline.staging: a converted dataset at a file:// URI copied to a local cache, once, within a
space limit, complete or not at all."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.dataset import DatasetError, load_dataset_info
from pipeline.staging import is_uri, stage_dataset, staged_folder


def _size(folder) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_is_uri():
    assert is_uri("s3://bucket/data") and is_uri("file:///mnt/x") and is_uri("gs://b/p")
    assert not is_uri("/mnt/shared/data") and not is_uri("relative/path") and not is_uri("C:/x")


def test_stage_copies_once_and_reads_back(demo_shards, tmp_path):
    uri = demo_shards.resolve().as_uri()
    local = stage_dataset(uri, tmp_path / "cache")
    assert local == staged_folder(uri, tmp_path / "cache")
    staged, original = load_dataset_info(local), load_dataset_info(demo_shards)
    names = [shard.name for shard in staged.split("train").shards]
    assert names == [shard.name for shard in original.split("train").shards]
    for shard in original.split("train").shards + original.split("val").shards:
        assert (local / shard.name).read_bytes() == shard.read_bytes()
    assert not list(local.glob("*.partial"))
    stamps = {path.name: path.stat().st_mtime_ns for path in local.glob("*.tar")}
    assert stage_dataset(uri, tmp_path / "cache") == local  # a second call copies nothing
    assert stamps == {path.name: path.stat().st_mtime_ns for path in local.glob("*.tar")}
    assert stage_dataset(str(demo_shards), tmp_path / "cache") == demo_shards  # a plain path stays


def test_interrupted_copy_is_completed(demo_shards, tmp_path):
    uri = demo_shards.resolve().as_uri()
    local = stage_dataset(uri, tmp_path / "cache")
    (local / "dataset.json").unlink()  # as if stopped before the end: incomplete
    first_shard = sorted(local.glob("train-*.tar"))[0]
    first_shard.write_bytes(b"partial")
    stage_dataset(uri, tmp_path / "cache")
    assert first_shard.read_bytes() == (demo_shards / first_shard.name).read_bytes()
    load_dataset_info(local)


def test_space_limit_evicts_least_recently_used(demo_shards, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(demo_shards, other)
    size = _size(demo_shards)
    cache = tmp_path / "cache"
    first = stage_dataset(other.as_uri(), cache, max_bytes=int(size * 1.5))
    second = stage_dataset(demo_shards.resolve().as_uri(), cache, max_bytes=int(size * 1.5))
    assert not first.exists() and (second / "dataset.json").exists()
    with pytest.raises(DatasetError, match="staging limit"):
        stage_dataset(other.as_uri(), tmp_path / "small", max_bytes=size // 2)


def test_another_conversion_at_the_same_uri_is_staged_again(demo_shards, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(demo_shards, source)
    local = stage_dataset(source.as_uri(), tmp_path / "cache")
    description = json.loads((source / "dataset.json").read_text())
    description["fingerprint"] = "another"
    (source / "dataset.json").write_text(json.dumps(description))
    stage_dataset(source.as_uri(), tmp_path / "cache")
    assert json.loads((local / "dataset.json").read_text())["fingerprint"] == "another"


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="finished conversion"):
        stage_dataset((tmp_path / "nothing").as_uri(), tmp_path / "cache")
