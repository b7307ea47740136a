"""`selfsup embed`: parquet rows that match `extract_features`, from shards or a plain folder,
written in row groups; the command line and the Python API on a trained run."""

from __future__ import annotations

import numpy as np
import pyarrow
import pyarrow.parquet as parquet
import pytest
import torch

import selfsup
from selfsup.cli.main import main
from selfsup.errors import DatasetError
from selfsup.methods.backbones import build_backbone
from selfsup.pipeline.dataset import load_dataset_info, read_manifest
from selfsup.trainer.embed import embed_images
from selfsup.trainer.evaluate import extract_features, load_backbone
from selfsup.trainer.loop import train
from selfsup.trainer.resume import find_checkpoint
from tests.trainer.training_run import OneTorchThread, tiny_config

SIZE = 32


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("resnet18", small_input=False)[0].eval()


@pytest.fixture(scope="module")
def shard_embeddings(backbone, demo_shards, tmp_path_factory):
    output = tmp_path_factory.mktemp("embed") / "shards.parquet"
    with OneTorchThread():
        summary = embed_images(backbone, output, data=demo_shards, image_size=SIZE, batch_size=16, rows_per_group=50)
    return summary, output


def test_rows_match_extract_features_split_by_split(backbone, demo_shards, shard_embeddings):
    summary, output = shard_embeddings
    assert summary["rows"] == 160 and summary["dimension"] == 512
    file = parquet.ParquetFile(output)
    groups = [file.metadata.row_group(index).num_rows for index in range(file.metadata.num_row_groups)]
    assert groups == [50, 50, 50, 10]  # streamed in groups of 50 rows
    assert file.schema_arrow.field("embedding").type == pyarrow.list_(pyarrow.float32(), 512)
    table = file.read().to_pylist()
    dataset = load_dataset_info(demo_shards)
    manifest = {row["key"]: row for row in read_manifest(demo_shards / "manifest.parquet")}
    for split in ("train", "val"):
        rows = [row for row in table if row["split"] == split]
        features, labels = extract_features(backbone, dataset, split, SIZE, 64, torch.device("cpu"))
        np.testing.assert_allclose(np.array([row["embedding"] for row in rows]), features.numpy(), atol=1e-5)
        assert [row["label"] for row in rows] == labels.tolist()
        assert [row["key"] for row in rows] == sorted(key for key, row in manifest.items() if row["split"] == split)
        assert all(row["source"] == manifest[row["key"]]["source"] for row in rows)
        assert all(row["label_name"] == dataset.classes[row["label"]] for row in rows)


def test_a_folder_of_images_gives_the_same_embeddings_as_its_shards(backbone, demo_folder, shard_embeddings, tmp_path):
    _, from_shards = shard_embeddings
    with OneTorchThread():
        summary = embed_images(backbone, tmp_path / "folder.parquet", images=demo_folder, image_size=SIZE,
                               batch_size=24)
    rows = parquet.read_table(tmp_path / "folder.parquet").to_pylist()
    assert summary["rows"] == len(rows) == 160
    by_source = {row["source"]: row for row in parquet.read_table(from_shards).to_pylist()}
    for row in rows:
        assert row["key"] == row["source"] and row["split"] is None
        assert row["label_name"] == row["source"].split("/")[0] == by_source[row["source"]]["label_name"]
        np.testing.assert_allclose(row["embedding"], by_source[row["source"]]["embedding"], atol=1e-5)


def test_bad_sources_leave_no_file(backbone, demo_shards, tmp_path):
    with pytest.raises(DatasetError, match="give either a converted dataset"):
        embed_images(backbone, tmp_path / "e.parquet", data=demo_shards, images=tmp_path, image_size=SIZE)
    with pytest.raises(DatasetError, match="no such folder of images"):
        embed_images(backbone, tmp_path / "e.parquet", images=tmp_path / "nowhere", image_size=SIZE)
    with pytest.raises(DatasetError, match="no split 'test'"):
        embed_images(backbone, tmp_path / "e.parquet", data=demo_shards, splits=["test"], image_size=SIZE)
    assert list(tmp_path.iterdir()) == []


def test_cli_and_api_embed_a_trained_run(demo_shards, tmp_path, capsys):
    run = tmp_path / "run"
    with OneTorchThread():
        train(tiny_config(demo_shards, "trainer.max_steps=1"), run)
        assert main(["embed", "--checkpoint", str(run), "--data", str(demo_shards), "--split", "val",
                     "--output", str(tmp_path / "val.parquet"), "--quiet"]) == 0
        assert f"wrote 40 embeddings of dimension 512 from {demo_shards}" in capsys.readouterr().out
        summary = selfsup.embed(run, tmp_path / "api.parquet", data=demo_shards, splits=["val"])
    assert summary["rows"] == 40
    trained, _ = load_backbone(find_checkpoint(run))
    features, _ = extract_features(trained, load_dataset_info(demo_shards), "val", SIZE, 64, torch.device("cpu"))
    for name in ("val.parquet", "api.parquet"):
        rows = parquet.read_table(tmp_path / name).to_pylist()
        np.testing.assert_allclose(np.array([row["embedding"] for row in rows]), features.numpy(), atol=1e-5)
    assert main(["embed", "--checkpoint", str(run), "--data", str(demo_shards), "--weights", "teacher",
                 "--output", str(tmp_path / "teacher.parquet")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # one line naming the checkpoint: no teacher
    assert line.startswith(f"selfsup: error: {find_checkpoint(run)}: simclr") and "teacher" in line


def test_a_folder_with_a_broken_and_a_sixteen_bit_image(backbone, demo_folder, tmp_path):
    """Read as `selfsup convert` reads: a truncated JPEG is skipped and listed (DALI's CPU decoder
    would crash on it), a 16-bit PNG is embedded from its 8-bit RGB rendering."""
    import shutil

    from PIL import Image

    folder = tmp_path / "folder" / "mixed"
    folder.mkdir(parents=True)
    for name in ("0000.jpg", "0001.jpg"):
        shutil.copy(demo_folder / "star" / name, folder / name)
    (folder / "broken.jpg").write_bytes((demo_folder / "star" / "0002.jpg").read_bytes()[:300])
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)).save(folder / "deep.png")
    with OneTorchThread():
        summary = embed_images(backbone, tmp_path / "mixed.parquet", images=tmp_path / "folder", image_size=SIZE,
                               batch_size=2)
    rows = parquet.read_table(tmp_path / "mixed.parquet").to_pylist()
    assert [row["key"] for row in rows] == ["mixed/0000.jpg", "mixed/0001.jpg", "mixed/deep.png"]
    assert [entry["path"] for entry in summary["skipped"]] == ["mixed/broken.jpg"]
    assert "cannot decode image" in summary["skipped"][0]["reason"]
    assert all(np.isfinite(row["embedding"]).all() for row in rows)
