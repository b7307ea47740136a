"""pipeline.staging: a converted dataset at a file:// or s3:// URI copied to a local cache, once,
within a space limit, complete or not at all. The s3:// tests use an S3 server on loopback (moto)."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from pipeline.dataset import DatasetError, load_dataset_info
from pipeline.staging import is_uri, public_uri, stage_dataset, staged_folder
from pipeline.verify import verify
from tests.s3_server import loopback_s3, unused_port


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


def test_public_uri_hides_credentials():
    assert public_uri("s3://KEY:SECRET@bucket/shapes/?endpoint_override=h:9000&scheme=http") == \
        "s3://bucket/shapes?endpoint_override=h:9000&scheme=http"
    assert public_uri("gs://bucket/x?access_token=abc") == "gs://bucket/x?access_token=%2A%2A%2A"
    assert public_uri("file:///mnt/shared/shapes/") == "file:///mnt/shared/shapes"


@pytest.fixture(scope="module")
def s3(demo_shards):
    """An S3 server on loopback holding the demo dataset twice: datasets/shapes and datasets/copy."""
    with loopback_s3() as store:
        store.upload(demo_shards, "datasets", "shapes")
        store.upload(demo_shards, "datasets", "copy")
        yield store


def test_stage_from_s3_copies_every_byte(s3, demo_shards, tmp_path, capsys):
    uri = s3.uri("datasets", "shapes")
    local = stage_dataset(uri, tmp_path / "cache")
    assert local == staged_folder(uri, tmp_path / "cache") and local.name.startswith("shapes-")
    originals = sorted(path.name for path in demo_shards.iterdir() if path.is_file())
    assert {path.name for path in local.iterdir()} >= set(originals)
    for name in originals:
        assert (local / name).read_bytes() == (demo_shards / name).read_bytes(), name
    assert verify(local, progress=False).ok  # every shard against the manifest, every image decoded
    assert f"staged {uri} -> {local}" in capsys.readouterr().out
    stamps = {path.name: path.stat().st_mtime_ns for path in local.glob("*.tar")}
    assert stage_dataset(uri, tmp_path / "cache") == local  # a second call copies nothing
    assert stamps == {path.name: path.stat().st_mtime_ns for path in local.glob("*.tar")}


def test_stage_from_s3_with_endpoint_from_environment(s3, demo_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3.endpoint}")
    local = stage_dataset("s3://datasets/shapes", tmp_path / "cache")
    assert (local / "manifest.parquet").read_bytes() == (demo_shards / "manifest.parquet").read_bytes()


def test_stage_from_s3_within_the_space_limit(s3, demo_shards, tmp_path):
    size = _size(demo_shards)
    cache = tmp_path / "cache"
    first = stage_dataset(s3.uri("datasets", "copy"), cache, max_bytes=int(size * 1.5))
    assert _size(cache) <= size * 1.5
    second = stage_dataset(s3.uri("datasets", "shapes"), cache, max_bytes=int(size * 1.5))
    assert not first.exists() and (second / "dataset.json").exists()  # the least recently used went
    assert _size(cache) <= size * 1.5
    with pytest.raises(DatasetError, match=r"s3://datasets/copy\?endpoint_override=.*staging limit"):
        stage_dataset(s3.uri("datasets", "copy"), tmp_path / "small", max_bytes="1KB")
    assert not (tmp_path / "small").exists() or _size(tmp_path / "small") == 0


def test_s3_credentials_stay_out_of_names_and_messages(s3, tmp_path, capsys):
    uri = f"s3://AKIDSELFSUP:NOT-TO-BE-PRINTED@datasets/shapes?endpoint_override={s3.endpoint}&scheme=http"
    local = stage_dataset(uri, tmp_path / "cache")
    assert local == staged_folder(s3.uri("datasets", "shapes"), tmp_path / "cache")  # same data, same copy
    marker = (local / ".staged").read_text()
    assert "NOT-TO-BE-PRINTED" not in marker + str(local) + capsys.readouterr().out
    with pytest.raises(DatasetError) as error:
        stage_dataset(uri.replace("datasets/shapes", "missing/shapes"), tmp_path / "cache")
    assert "NOT-TO-BE-PRINTED" not in str(error.value)


def test_s3_errors_name_the_uri(s3, tmp_path):
    with pytest.raises(DatasetError, match=r"s3://missing/shapes\?endpoint_override=.*the bucket 'missing' "
                                           r"does not exist"):
        stage_dataset(s3.uri("missing", "shapes"), tmp_path / "cache")
    with pytest.raises(DatasetError, match=r"s3://datasets/nothing/dataset.json: not found; is "
                                           r"s3://datasets/nothing\?endpoint_override=.* a finished conversion"):
        stage_dataset(s3.uri("datasets", "nothing"), tmp_path / "cache")
    with pytest.raises(DatasetError, match=r"s3://datasets/shapes\?foo=1: not a location pyarrow can open"):
        stage_dataset("s3://datasets/shapes?foo=1", tmp_path / "cache")
    port = unused_port()
    started = time.monotonic()
    with pytest.raises(DatasetError, match=rf"s3://datasets/shapes/dataset.json: cannot read it from "
                                           rf"s3://datasets/shapes\?endpoint_override=127.0.0.1:{port}.*{port}"):
        stage_dataset(f"s3://datasets/shapes?endpoint_override=127.0.0.1:{port}&scheme=http", tmp_path / "cache")
    assert time.monotonic() - started < 60  # pyarrow retries a few times, then gives up
    assert not list((tmp_path / "cache").glob("shapes-*"))
