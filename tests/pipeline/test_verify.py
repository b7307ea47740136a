"""verify: a clean dataset passes; corrupt bytes, truncated shards and lost indexes are each reported."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from selfsup.pipeline.convert import convert
from selfsup.pipeline.dataset import read_manifest
from selfsup.errors import DatasetError
from selfsup.pipeline.verify import format_report, verify

sys.path.insert(0, str(Path(__file__).parent))
from image_files import noise, write_class_folders  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A labeled dataset of 24 images over several shards, plus a PNG so both image kinds appear."""
    source = tmp_path_factory.mktemp("verify") / "src"
    write_class_folders(source, classes=2, per_class=12, size=(48, 36))
    noise(40, 30, 99).save(source / "c1" / "extra.png")
    output = source.parent / "out"
    convert(source, output, shard_size="40KB", val_fraction=0.2, workers=1, progress=False)
    return output


@pytest.fixture
def dataset(converted, tmp_path):
    """A fresh copy of the converted dataset, free to damage."""
    copy = tmp_path / "copy"
    shutil.copytree(converted, copy)
    return copy


def test_clean_dataset_is_ok(converted):
    report = verify(converted)
    assert report.ok, report.problems
    assert report.samples_checked == 25 and report.shards_checked >= 3
    assert "no problems" in format_report(report)


def test_one_corrupt_byte_in_an_image_is_reported_with_shard_and_key(dataset):
    row = read_manifest(dataset / "manifest.parquet")[5]
    shard = dataset / row["shard"]
    data = bytearray(shard.read_bytes())
    data[row["offset"] + row["bytes"] // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    report = verify(dataset)
    assert not report.ok
    assert {(problem.shard, problem.key) for problem in report.problems} == {(row["shard"], row["key"])}
    text = format_report(report)
    assert row["shard"] in text and row["key"] in text


def test_corrupt_image_header_fails_to_decode(dataset):
    row = read_manifest(dataset / "manifest.parquet")[2]
    shard = dataset / row["shard"]
    data = bytearray(shard.read_bytes())
    data[row["offset"]:row["offset"] + 8] = b"garbage!"
    shard.write_bytes(bytes(data))
    messages = [problem.message for problem in verify(dataset).problems if problem.key == row["key"]]
    assert any("does not decode" in message for message in messages)


def test_truncated_shard_reports_the_lost_keys(dataset):
    rows = read_manifest(dataset / "manifest.parquet")
    shard_name = rows[0]["shard"]
    shard_rows = [row for row in rows if row["shard"] == shard_name]
    assert len(shard_rows) >= 2
    shard = dataset / shard_name
    shard.write_bytes(shard.read_bytes()[:shard_rows[-1]["offset"] + 10])
    report = verify(dataset)
    problems = [problem for problem in report.problems if problem.shard == shard_name]
    assert any(problem.key == shard_rows[-1]["key"] for problem in problems)
    assert any(problem.key is None and "truncated" in problem.message for problem in problems)
    assert any(problem.shard == "dataset.json" for problem in report.problems)  # counts no longer match


def test_missing_index_and_missing_shard_are_reported(dataset):
    rows = read_manifest(dataset / "manifest.parquet")
    first, last = rows[0]["shard"], rows[-1]["shard"]
    (dataset / first).with_suffix(".idx").unlink()
    (dataset / last).unlink()
    report = verify(dataset)
    by_shard = {(problem.shard, problem.key): problem.message for problem in report.problems}
    assert "missing" in by_shard[(first, None)] and ".idx" in by_shard[(first, None)]
    assert "missing" in by_shard[(last, None)]
    text = format_report(report)
    assert first in text and last in text


def test_wrong_index_and_bad_label_are_reported(dataset):
    rows = read_manifest(dataset / "manifest.parquet")
    index = (dataset / rows[0]["shard"]).with_suffix(".idx")
    lines = index.read_text().splitlines()
    fields = lines[1].split()
    fields[1] = str(int(fields[1]) + 512)
    index.write_text("\n".join([lines[0], " ".join(fields), *lines[2:]]) + "\n")
    report = verify(dataset)
    assert any(problem.shard == rows[0]["shard"] and problem.key == rows[0]["key"] and ".idx" in problem.message
               for problem in report.problems)


def test_unusable_output_raises(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset folder"):
        verify(tmp_path / "missing")
    with pytest.raises(DatasetError, match="dataset.json: missing.*selfsup convert"):
        verify(tmp_path)


def test_verify_needs_no_lock_and_is_not_fooled_by_one(dataset, tmp_path):
    """A lock held on the dataset (a conversion re-run, a crashed one's file) changes nothing; an
    unfinished conversion's folder is refused with the name of the process writing it."""
    import os

    from selfsup.locks import LOCK_FILE, hold_folder_lock

    with hold_folder_lock(dataset, "selfsup convert"):
        report = verify(dataset)
    assert report.ok and report.samples_checked == 25, report.problems
    (dataset / LOCK_FILE).write_text('{"purpose": "selfsup convert", "host": "h", "pid": 1, "since": "s"}')
    assert verify(dataset).ok  # the file a killed conversion leaves behind
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    with hold_folder_lock(unfinished, "selfsup convert"):
        with pytest.raises(DatasetError, match=rf"dataset.json: missing; {unfinished} is not a finished conversion; "
                                               rf"its lock names selfsup convert, pid {os.getpid()} on "):
            verify(unfinished)


def test_a_manifest_in_small_row_groups_and_any_order_verifies_the_same(dataset):
    """verify reads the manifest a row group at a time and finds each shard's rows wherever they are."""
    from selfsup.pipeline.dataset import write_manifest

    rows = read_manifest(dataset / "manifest.parquet")
    write_manifest(dataset / "manifest.parquet", rows[::-1][::2] + rows[::-1][1::2], rows_per_group=3)
    report = verify(dataset)
    assert report.ok, report.problems
    assert report.samples_checked == 25
    row = rows[4]
    write_manifest(dataset / "manifest.parquet", [other for other in rows if other is not row], rows_per_group=4)
    lost = verify(dataset)
    assert {(problem.shard, problem.key) for problem in lost.problems if problem.key} == {(row["shard"], row["key"])}
    assert any("manifest rows" in problem.message for problem in lost.problems if problem.shard == "manifest.parquet")
