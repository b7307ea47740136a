"""A damaged sample inside a shard: the loaders stop with one error naming the shard and the key
(not DALI's "Critical error in pipeline"), read around samples they are told to leave out, and
`selfsup eval` and `selfsup preview` end with one `selfsup: error:` line (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from selfsup.errors import DamagedSamplesError
from selfsup.pipeline.dataset import load_dataset_info, read_manifest
from selfsup.pipeline.loader import build_eval_loader, build_train_loader
from selfsup.pipeline.recipes import EvalRecipe, build_recipe
from selfsup.pipeline.verify import verify
from selfsup.trainer.loop import train
from tests.trainer.training_run import tiny_config

sys.path.insert(0, str(Path(__file__).parent))
from damaged_shards import copy_dataset, last_row_of_a_shard, overwrite_image, rewrite_member  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def train_batches(dataset: Path, batches: int, **options) -> list[dict]:
    loader = build_train_loader(load_dataset_info(dataset), build_recipe("simclr", 32), batch_size=8,
                                num_threads=1, **options)
    try:
        return [batch for _, batch in zip(range(batches), loader)]
    finally:
        loader.close()


def eval_labels(dataset: Path, split: str = "train") -> list[int]:
    loader = build_eval_loader(load_dataset_info(dataset), EvalRecipe(size=32), batch_size=16, split=split,
                               num_threads=1)
    try:
        return [int(label) for batch in loader for label in batch["label"]]
    finally:
        loader.close()


@pytest.fixture
def garbled(demo_shards, tmp_path):
    """The demo dataset with the first bytes of one train image overwritten: (folder, its row)."""
    dataset = copy_dataset(demo_shards, tmp_path / "garbled")
    rows = [number for number, row in enumerate(read_manifest(dataset / "manifest.parquet")) if row["split"] == "train"]
    return dataset, overwrite_image(dataset, rows[7])


def test_an_image_that_does_not_decode_is_named_by_shard_and_key(garbled):
    dataset, row = garbled
    with pytest.raises(DamagedSamplesError) as caught:
        train_batches(dataset, 40)  # more than an epoch: every sample passes
    message = str(caught.value)
    assert "\n" not in message and "Critical error" not in message
    assert row["shard"] in message and row["key"] in message and "selfsup verify" in message
    assert [(Path(sample.shard).name, sample.key) for sample in caught.value.samples] == [(row["shard"], row["key"])]
    assert {(problem.shard, problem.key) for problem in verify(dataset).problems} == {(row["shard"], row["key"])}
    with pytest.raises(DamagedSamplesError, match=row["key"]):
        eval_labels(dataset)


def test_excluded_samples_are_read_around_and_the_epoch_keeps_its_steps(garbled, demo_shards):
    dataset, row = garbled
    info = load_dataset_info(dataset)
    excluded = frozenset({(row["shard"], row["offset"])})
    loader = build_train_loader(info, build_recipe("simclr", 32), batch_size=8, num_threads=1, excluded=excluded)
    try:
        assert loader.steps_per_epoch == info.split("train").count // 8  # the whole split counts
        seen = set()
        for _, batch in zip(range(3 * loader.steps_per_epoch), loader):  # three passes, no error
            seen.update(int(position) for position in batch["index"])
        trimmed = Path(loader.trimmed_indexes)
        assert (trimmed / Path(row["shard"]).with_suffix(".idx").name).is_file()
    finally:
        loader.close()
    assert not trimmed.exists()  # the trimmed indexes go with the loader
    assert len(seen) == info.split("train").count - 1  # every other sample, at its own position


def test_an_empty_image_member_is_named(demo_shards, tmp_path):
    dataset = copy_dataset(demo_shards, tmp_path / "empty")
    row = last_row_of_a_shard(dataset)
    rewrite_member(dataset / row["shard"], row["key"], "jpg", b"")
    with pytest.raises(DamagedSamplesError, match=f"{row['key']}.*image member is empty"):
        train_batches(dataset, 40)


def test_a_cls_that_is_no_class_index_is_named_by_the_loader_and_verify(demo_shards, tmp_path):
    dataset = copy_dataset(demo_shards, tmp_path / "labels")
    row = last_row_of_a_shard(dataset, "val")
    rewrite_member(dataset / row["shard"], row["key"], "cls", b"x7")
    with pytest.raises(DamagedSamplesError, match=f"{row['key']}.*\\.cls is 'x7', expected a class index in 0..9"):
        eval_labels(dataset, "val")
    assert any(problem.key == row["key"] and ".cls is 'x7'" in problem.message for problem in verify(dataset).problems)
    rewrite_member(dataset / row["shard"], row["key"], "cls", b"12")  # digits, but past the 10 classes
    with pytest.raises(DamagedSamplesError, match=r"\.cls is '12'"):
        eval_labels(dataset, "val")


def run_selfsup(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfsup", *arguments], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_eval_and_preview_end_with_one_line_naming_the_sample(garbled, demo_shards, tmp_path):
    """In their own processes: DALI crashed the process (a segmentation fault) after such an error
    until its pipeline was shut down explicitly."""
    dataset, row = garbled
    first = copy_dataset(demo_shards, tmp_path / "first")
    first_row = overwrite_image(first, 0)  # the first sample in shard order: the one preview shows first
    preview = run_selfsup("preview", str(first), "--recipe", "simclr", "--out", str(tmp_path / "p.png"))
    assert preview.returncode == 2, preview.stderr
    assert preview.stderr.strip().splitlines() == [preview.stderr.strip()]
    assert preview.stderr.startswith("selfsup: error:") and first_row["key"] in preview.stderr
    run = tmp_path / "run"
    train(tiny_config(demo_shards, "trainer.max_steps=1"), run)
    knn = run_selfsup("eval", "knn", "--checkpoint", str(run), "--data", str(dataset))
    assert knn.returncode == 2, knn.stderr[-2000:]
    last = knn.stderr.strip().splitlines()[-1]
    assert last.startswith("selfsup: error:") and row["shard"] in last and row["key"] in last


def test_the_segmentation_loader_names_a_damaged_image(demo_masked_shards, tmp_path):
    from selfsup.pipeline.segmentation_loader import build_segmentation_loader

    dataset = copy_dataset(demo_masked_shards, tmp_path / "masked")
    rows = [number for number, row in enumerate(read_manifest(dataset / "manifest.parquet")) if row["split"] == "val"]
    row = overwrite_image(dataset, rows[3])
    for train in (False, True):  # DALI may meet it while the iterator starts (its first batch) or later
        with pytest.raises(DamagedSamplesError, match=f"{row['shard']}: sample {row['key']} "):
            loader = build_segmentation_loader(load_dataset_info(dataset), split="val", size=32, batch_size=8,
                                               train=train, num_threads=1)
            try:
                for _ in zip(range(20), loader):
                    pass
            finally:
                loader.close()
