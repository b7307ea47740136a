"""The DALI loader over real shards in CPU mode: shapes, ranges, labels, seeds, sharding."""

from __future__ import annotations

import pyarrow.parquet as parquet
import pytest
import torch

from selfsup.pipeline.dataset import load_dataset_info

from selfsup.errors import DatasetError
from selfsup.pipeline.loader import build_eval_loader, build_train_loader, parse_label_digits
from selfsup.pipeline.recipes import EvalRecipe, ViewSpec, build_recipe, simclr_recipe
from selfsup.errors import RecipeError


def first_batches(loader, count):
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            break
    loader.close()
    return batches


def test_parse_label_digits():
    digits = torch.tensor([[ord("7"), 0, 0], [ord("1"), ord("2"), 0], [ord("3"), ord("0"), ord("5")]],
                          dtype=torch.uint8)
    assert parse_label_digits(digits).tolist() == [7, 12, 305]


def test_simclr_views_shapes_ranges_and_labels(demo_shards):
    dataset = load_dataset_info(demo_shards)
    loader = build_train_loader(dataset, simclr_recipe(image_size=32), batch_size=16, seed=3, num_threads=1)
    assert loader.steps_per_epoch == dataset.split("train").count // 16
    batches = first_batches(loader, loader.steps_per_epoch + 2)  # runs past the end of an epoch
    for batch in batches:
        assert set(batch) == {"view_0", "view_1", "label", "index"}
        for name in ("view_0", "view_1"):
            view = batch[name]
            assert view.shape == (16, 3, 32, 32) and view.dtype == torch.float32
            # normalized with ImageNet statistics: (0 - 0.485)/0.229 .. (1 - 0.406)/0.225
            assert view.min() >= -2.2 and view.max() <= 2.7
        assert batch["label"].dtype == torch.int64
        assert 0 <= int(batch["label"].min()) and int(batch["label"].max()) < len(dataset.classes)
    first = batches[0]
    assert not torch.equal(first["view_0"], first["view_1"]), "the two views must differ"


def test_fixed_seed_gives_the_same_batch_and_another_seed_does_not(demo_shards):
    dataset = load_dataset_info(demo_shards)
    recipe = simclr_recipe(image_size=24)

    def batch(seed):
        return first_batches(build_train_loader(dataset, recipe, batch_size=8, seed=seed, num_threads=1), 1)[0]

    a, b, c = batch(5), batch(5), batch(6)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["view_0"], c["view_0"])


def test_ranks_read_disjoint_parts_and_index_names_each_sample(demo_shards):
    """Over one epoch the two ranks' `index` values are distinct positions in the train split, and
    each one names the sample the batch holds (its label is that manifest row's label)."""
    dataset = load_dataset_info(demo_shards)
    recipe = build_recipe("simclr", 16)
    table = parquet.read_table(demo_shards / "manifest.parquet")
    rows = sorted((row for row in table.to_pylist() if row["split"] == "train"), key=lambda row: row["key"])
    seen = []
    for rank in (0, 1):
        loader = build_train_loader(dataset, recipe, batch_size=4, rank=rank, world_size=2, num_threads=1)
        assert loader.steps_per_epoch == dataset.split("train").count // 8
        assert "index" in loader.output_names
        for _, batch in zip(range(loader.steps_per_epoch), loader):
            assert batch["index"].dtype == torch.int64 and batch["index"].shape == (4,)
            assert batch["label"].tolist() == [rows[i]["label"] for i in batch["index"].tolist()]
            seen.extend(batch["index"].tolist())
        loader.close()
    assert len(set(seen)) == len(seen) == dataset.split("train").count // 8 * 8
    assert min(seen) >= 0 and max(seen) < len(rows)


def test_eval_loader_reads_every_sample_once_in_order(demo_shards):
    dataset = load_dataset_info(demo_shards)
    loader = build_eval_loader(dataset, EvalRecipe(size=32), batch_size=16, split="val", num_threads=1)
    labels, sizes = [], []
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 32, 32)
        sizes.append(len(batch["image"]))
        labels.append(batch["label"])
    labels = torch.cat(labels)
    assert sum(sizes) == dataset.split("val").count  # the last partial batch is kept, nothing padded
    table = parquet.read_table(demo_shards / "manifest.parquet")
    rows = [row for row in table.to_pylist() if row["split"] == "val"]
    rows.sort(key=lambda row: (row["shard"], row["offset"]))
    assert labels.tolist() == [row["label"] for row in rows]


def test_too_large_a_batch_is_a_clear_error(demo_shards):
    dataset = load_dataset_info(demo_shards)
    with pytest.raises(DatasetError, match=r"fewer than one global batch.*lower data.batch_size"):
        build_train_loader(dataset, simclr_recipe(image_size=16), batch_size=4096)


def test_malformed_recipes_are_refused():
    with pytest.raises(RecipeError, match=r"scale=\(0.9, 0.1\)"):
        simclr_recipe(image_size=32, scale=(0.9, 0.1))
    with pytest.raises(RecipeError, match=r"blur_probability=1.5 must be a probability"):
        simclr_recipe(image_size=32, blur_probability=1.5)
    with pytest.raises(RecipeError, match=r"unknown option\(s\) \['blurr'\]"):
        build_recipe("simclr", 32, blurr=0.5)
    with pytest.raises(RecipeError, match="unknown recipe 'simclrr'"):
        build_recipe("simclrr", 32)
    with pytest.raises(RecipeError, match="size=4"):
        simclr_recipe(image_size=4)
    assert ViewSpec().size == 224


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_decoding_on_gpu(demo_shards):
    dataset = load_dataset_info(demo_shards)
    loader = build_train_loader(dataset, simclr_recipe(image_size=32), batch_size=8, device="cuda:0")
    batch = first_batches(loader, 1)[0]
    assert batch["view_0"].is_cuda and batch["view_0"].shape == (8, 3, 32, 32)


def test_unlabeled_datasets_decode_whole_images(tmp_path):
    """With one reader extension DALI returns a bare node: views must still be real images."""
    from PIL import Image

    from selfsup.pipeline.convert import convert

    folder = tmp_path / "flat"
    folder.mkdir()
    for index in range(8):
        Image.new("RGB", (40, 30), (30 * index, 100, 200)).save(folder / f"{index}.png")
    convert(folder, tmp_path / "shards", workers=1, progress=False)
    dataset = load_dataset_info(tmp_path / "shards")
    assert not dataset.labeled
    recipe = simclr_recipe(image_size=16, jitter_probability=0.0, grayscale_probability=0.0, blur_probability=0.0)
    batch = first_batches(build_train_loader(dataset, recipe, batch_size=4, num_threads=1), 1)[0]
    assert set(batch) == {"view_0", "view_1", "index"}
    blue = batch["view_0"][:, 2] * 0.225 + 0.406  # a plain colour: every pixel of a view alike
    assert torch.allclose(blue, torch.full_like(blue, 200 / 255), atol=0.01)
    images = first_batches(build_eval_loader(dataset, EvalRecipe(size=16), batch_size=8, split="train",
                                             num_threads=1), 1)[0]["image"]
    assert images.shape == (8, 3, 16, 16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name, size, options", [
    ("byol", 32, {}), ("dino", 32, {"local_size": 16, "local_crops": 2}), ("rotation", 32, {"mode": "one"}),
    ("jigsaw", 48, {}), ("relative_location", 48, {}), ("mae", 32, {"patch_size": 8}),
    ("beit", 32, {"patch_size": 8}), ("colorization", 32, {}), ("inpainting", 32, {"region": "random"}),
    ("super_resolution", 32, {}), ("denoising", 32, {"corruption": "masking"}),
    ("denoising", 32, {"corruption": "gaussian"}),
])
def test_every_pretext_graph_runs_on_gpu(demo_shards, name, size, options):
    dataset = load_dataset_info(demo_shards)
    loader = build_train_loader(dataset, build_recipe(name, size, **options), batch_size=8, device="cuda:0")
    batch = first_batches(loader, 1)[0]
    assert all(value.is_cuda for value in batch.values()), {key: value.device for key, value in batch.items()}
