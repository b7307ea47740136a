"""`selfsup index` on shards written by `webdataset.ShardWriter`: odd extensions (.jpeg, .png, .webp),
samples without labels, one corrupt image, one sample without an image. The tars stay byte for
byte as they were; the loader (real DALI, CPU mode) reads every kept sample and never an excluded one."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as parquet
import pytest
import torch

from selfsup.errors import DamagedSamplesError, DatasetError
from selfsup.pipeline import index as index_module
from selfsup.pipeline.dataset import load_dataset_info
from selfsup.pipeline.index import format_index_summary, index
from selfsup.pipeline.loader import build_eval_loader, build_train_loader
from selfsup.pipeline.recipes import EvalRecipe, simclr_recipe
from selfsup.pipeline.verify import verify

sys.path.insert(0, str(Path(__file__).parent))
from foreign_shards import CLASS_NAMES, write_foreign_shards  # noqa: E402


def tar_digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.glob("*.tar"))}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The shards as another tool wrote them (never indexed: copy them before indexing)."""
    return write_foreign_shards(tmp_path_factory.mktemp("foreign") / "written")


@pytest.fixture(scope="module")
def adopted(written, tmp_path_factory):
    """A copy of the shards, indexed with `.cls` labels; (the folder, its IndexSummary)."""
    folder = tmp_path_factory.mktemp("adopted") / "shards"
    shutil.copytree(written.folder, folder)
    return folder, index(folder, workers=2, progress=False)


def manifest_rows(folder: Path) -> list[dict]:
    return parquet.read_table(folder / "manifest.parquet").to_pylist()


def test_index_writes_idx_manifest_and_dataset_json_and_leaves_the_tars_untouched(written, adopted):
    folder, summary = adopted
    assert tar_digests(folder) == tar_digests(written.folder)
    assert sorted(path.name for path in folder.glob("*.idx")) == [name.replace(".tar", ".idx")
                                                                 for name in tar_digests(folder)]
    description = json.loads((folder / "dataset.json").read_text())
    assert description["origin"] == "index" and description["label_source"] == "manifest"
    assert description["labeled"] and description["classes"] == ["0", "1", "2"]
    assert description["splits"]["train"]["count"] == len(written.labels) == 33
    rows = manifest_rows(folder)
    assert {row["source"]: row["label"] for row in rows} == written.labels
    assert {row["source"].rsplit(".", 1)[1] for row in rows} == {"jpeg", "png", "webp"}
    reasons = {error["path"].split(":", 1)[1]: error["reason"]
               for error in map(json.loads, (folder / "errors.jsonl").read_text().splitlines())}
    assert set(reasons) == {written.corrupt, *written.unlabeled, written.no_image}
    assert "does not decode" in reasons[written.corrupt]
    assert all(reasons[member] == "no label: no .cls member" for member in written.unlabeled)
    assert "no image member" in reasons[written.no_image]
    text = format_index_summary(summary)
    assert "train: 33 images in 4 shards" in text and f"{written.corrupt}: does not decode" in text
    assert verify(folder).ok, verify(folder).problems


def test_the_loader_reads_every_kept_sample_and_never_an_excluded_one(written, adopted):
    folder, _ = adopted
    dataset = load_dataset_info(folder)
    rows = manifest_rows(folder)  # in position order: shard by shard, in tar order
    loader = build_eval_loader(dataset, EvalRecipe(size=32), batch_size=8, split="train", num_threads=1)
    labels = torch.cat([batch["label"] for batch in loader])
    assert labels.tolist() == [row["label"] for row in rows]
    train = build_train_loader(dataset, simclr_recipe(image_size=32), batch_size=8, num_threads=1, seed=1)
    seen = []
    for _, batch in zip(range(4 * train.steps_per_epoch), train):
        assert batch["view_0"].shape == (8, 3, 32, 32)
        assert batch["label"].tolist() == [rows[position]["label"] for position in batch["index"].tolist()]
        seen.extend(batch["index"].tolist())
    assert set(seen) <= set(range(33)) and len(set(seen)) > 24  # 4 passes: (nearly) every sample
    assert {rows[position]["source"] for position in seen}.isdisjoint({written.corrupt, *written.unlabeled})


def test_the_corrupt_image_would_break_the_loader_were_it_indexed(written, adopted, tmp_path):
    """The index is what keeps it out: listed again, DALI reads it and fails to decode it, and the
    loader names it (shard and key), not DALI's "Critical error in pipeline"."""
    folder, _ = adopted
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    with tarfile.open(copy / "part-000000.tar") as archive:
        member = archive.getmember(written.corrupt)
    idx = copy / "part-000000.idx"
    lines = idx.read_text().splitlines()
    lines.append(f"{written.corrupt.rsplit('.', 1)[1]} {member.offset_data} {member.size} {written.corrupt}")
    idx.write_text(f"v1.2 {len(lines) - 1}\n" + "\n".join(lines[1:]) + "\n")
    loader = build_eval_loader(load_dataset_info(copy), EvalRecipe(size=32), batch_size=8, split="train",
                               num_threads=1)
    with pytest.raises(DamagedSamplesError, match=f"part-000000.tar: sample {written.corrupt.rsplit('.', 1)[0]} "):
        for _ in loader:
            pass


def test_labels_from_a_json_field_or_none(written, tmp_path):
    folder = tmp_path / "named"
    shutil.copytree(written.folder, folder)
    summary = index(folder, label_field="class_name", workers=1, progress=False)
    assert summary.labeled and summary.classes == list(CLASS_NAMES) and summary.counts == {"train": 35}
    rows = manifest_rows(folder)
    labels = {**written.labels, **{member: int(member[7:11]) % 3 for member in written.unlabeled}}
    assert {row["source"]: row["label"] for row in rows} == labels
    loader = build_eval_loader(load_dataset_info(folder), EvalRecipe(size=32), batch_size=16, split="train",
                               num_threads=1)
    assert torch.cat([batch["label"] for batch in loader]).tolist() == [row["label"] for row in rows]

    summary = index(folder, unlabeled=True, workers=1, progress=False)  # indexing again replaces the first
    assert not summary.labeled and summary.counts == {"train": 35}
    dataset = load_dataset_info(folder)
    assert not dataset.labeled and not dataset.manifest_labels
    batch = next(iter(build_train_loader(dataset, simclr_recipe(image_size=32), batch_size=8, num_threads=1)))
    assert "label" not in batch and batch["index"].max() < 35


def test_splits_by_pattern_or_by_the_last_shards(written, tmp_path):
    folder = tmp_path / "split"
    shutil.copytree(written.folder, folder)
    summary = index(folder, split_patterns={"val": "*-000003.tar"}, workers=1, progress=False)
    assert summary.shards == {"train": ["part-000000.tar", "part-000001.tar", "part-000002.tar"],
                              "val": ["part-000003.tar"]}
    assert load_dataset_info(folder).split("val").count == 6  # samples 30-35; the image-less one excluded
    summary = index(folder, val_fraction=0.5, workers=1, progress=False)
    assert summary.shards["val"] == ["part-000002.tar", "part-000003.tar"]
    with pytest.raises(DatasetError, match="not both"):
        index(folder, val_fraction=0.5, split_patterns={"val": "*"}, progress=False)
    with pytest.raises(DatasetError, match="unknown split 'test'"):
        index(folder, split_patterns={"test": "*"}, progress=False)


def test_a_truncated_tar_keeps_the_samples_before_the_cut(written, tmp_path):
    folder = tmp_path / "cut"
    shutil.copytree(written.folder, folder)
    shard = folder / "part-000001.tar"
    with tarfile.open(shard) as archive:
        members = [member for member in archive if member.name.endswith((".jpeg", ".png", ".webp"))]
    shard.write_bytes(shard.read_bytes()[:members[5].offset_data + 10])  # cut inside the 6th image
    summary = index(folder, workers=1, progress=False)
    problems = [error for error in summary.excluded if error["path"] == "part-000001.tar"]
    assert len(problems) == 1 and "unreadable after" in problems[0]["reason"]
    kept = [row for row in manifest_rows(folder) if row["shard"] == "part-000001.tar"]
    assert [row["source"] for row in kept] == [member.name for member in members[:5]
                                               if member.name not in written.unlabeled]
    assert verify(folder).ok


def test_an_interrupted_index_goes_on_from_the_recorded_shards(written, tmp_path, monkeypatch):
    folder = tmp_path / "resumed"
    shutil.copytree(written.folder, folder)
    real_scan, calls = index_module.scan_shard, []

    def scan_then_stop(root, relative, label_field):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(relative)
        return real_scan(root, relative, label_field)

    monkeypatch.setattr(index_module, "scan_shard", scan_then_stop)
    with pytest.raises(KeyboardInterrupt):
        index(folder, workers=1, progress=False)
    assert not (folder / "dataset.json").exists()
    monkeypatch.setattr(index_module, "scan_shard", real_scan)
    summary = index(folder, workers=1, progress=False)
    assert summary.scanned == 2 and summary.counts == {"train": 33}
    assert not (folder / index_module.STATE_FOLDER).exists()


def test_refusals_name_the_folder(demo_shards, written, tmp_path):
    with pytest.raises(DatasetError, match="already holds a dataset that `index` did not write"):
        index(demo_shards, progress=False)
    other = tmp_path / "other"
    shutil.copytree(written.folder, other)
    (other / "dataset.json").write_text('{"name": "made by another tool"}')
    with pytest.raises(DatasetError, match="dataset.json: a file that selfsup did not write"):
        index(other, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .tar files found"):
        index(tmp_path / "empty", progress=False)
    with pytest.raises(DatasetError, match="no such folder"):
        index(tmp_path / "missing", progress=False)
