"""CompactPlan lists exactly the items of build_plan, and the tasks convert hands its workers."""

from __future__ import annotations

import pytest

from selfsup.pipeline.compact_plan import CompactPlan
from selfsup.pipeline.convert_plan import SPLITS, build_plan

FILES = sorted([f"{name}/img{number:03d}.jpg" for name in ("cat", "dog", "fish") for number in range(16)]
               + ["cat/ünïcödé 日本.jpg", "dog/deep/é.png", "fish/x y.webp", "fish/not-utf8-\udce9.jpg"])


@pytest.mark.parametrize("classes, val_fraction, seed", [(["cat", "dog", "fish"], 0.2, 3), ([], 0.0, 0),
                                                         (["cat", "dog", "fish"], 0.5, 11)])
def test_the_compact_plan_is_build_plan(classes, val_fraction, seed):
    expected = build_plan(FILES, classes, val_fraction, seed)
    plan = CompactPlan.build(FILES, classes, val_fraction, seed)
    assert len(plan) == len(expected)
    starts = {split: 0 for split in SPLITS}
    listed = [(split, index, item) for split, index, item in plan.remaining(starts)]
    by_split = {split: [item for item in expected if item.split == split] for split in SPLITS}
    assert listed == [(split, index, item) for split in SPLITS for index, item in enumerate(by_split[split])]
    assert {split: plan.count(split) for split in SPLITS} == {split: len(items) for split, items in by_split.items()}


def test_tasks_after_a_resume_are_the_remaining_items_and_slice_like_a_list():
    plan = CompactPlan.build(FILES, ["cat", "dog", "fish"], 0.3, 5)
    starts = {"val": 4, "train": 9}
    remaining = list(plan.remaining(starts))
    tasks = plan.tasks("/src", 64, starts)
    expected = [("/src", item.relative, 64) for _, _, item in remaining]
    assert len(tasks) == len(expected) == len(FILES) - 13
    assert list(tasks) == expected and tasks[:] == expected
    assert tasks[5:12] == expected[5:12] and tasks[-1] == expected[-1] and tasks[len(tasks) - 3:] == expected[-3:]
    assert [item.key for _, _, item in remaining][:2] == ["000000004", "000000005"]
    with pytest.raises(IndexError):
        tasks[len(tasks)]


def test_the_fingerprint_hashes_the_same_bytes_as_json_dumps_of_each_file(tmp_path):
    """A conversion interrupted by an older selfsup must still be recognised: same fingerprint."""
    import hashlib
    import json

    from selfsup.pipeline.convert_plan import source_fingerprint
    from selfsup.pipeline.dataset import FORMAT_VERSION
    from selfsup.pipeline.source_scan import scan_source

    files = ["a/plain.jpg", "b/ünïcode \"quoted\".png", "c/deep/x.webp"]
    for relative in files:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x" * len(relative))
    options = {"shard_size": 100, "seed": 0}
    digest = hashlib.sha256(json.dumps([str(tmp_path), options, FORMAT_VERSION]).encode())
    for relative in files:
        stat = (tmp_path / relative).stat()
        digest.update(json.dumps([relative, stat.st_size, stat.st_mtime_ns]).encode())
    scan = scan_source(tmp_path)
    assert scan.files == files and not scan.skipped
    assert source_fingerprint(tmp_path, scan, options) == digest.hexdigest()
