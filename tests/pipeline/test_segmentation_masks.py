"""Label maps carried by `selfsup convert --masks`: written as KEY.seg.png, verified, previewed, and
read by a loader that crops image and mask alike; the demo shapes' own masks."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from selfsup.errors import DatasetError
from selfsup.pipeline.convert import convert
from selfsup.pipeline.dataset import load_dataset_info, read_manifest
from selfsup.pipeline.demo_images import CLASSES, draw_image, draw_image_and_mask
from selfsup.pipeline.preview import render_preview
from selfsup.pipeline.segmentation_loader import build_segmentation_loader, mask_batch
from selfsup.pipeline.segmentation_masks import decode_mask, first_masks
from selfsup.pipeline.shards import read_index_entries
from selfsup.pipeline.verify import verify


def test_demo_masks_cover_the_shape_drawn_and_keep_the_images(demo_masks_folder):
    first, second = np.random.default_rng(4), np.random.default_rng(4)
    image, mask = draw_image_and_mask("star", first, size=64)
    assert np.array_equal(np.asarray(image), np.asarray(draw_image("star", second, size=64)))  # same draws
    values = np.asarray(mask)
    assert set(np.unique(values)) == {0, CLASSES.index("star") + 1} and 0.05 < (values > 0).mean() < 0.6
    images, masks = demo_masks_folder
    assert sorted(path.name for path in masks.iterdir()) == sorted(CLASSES)
    assert Image.open(masks / "ring" / "0003.png").size == Image.open(images / "ring" / "0003.jpg").size


def test_convert_carries_each_mask_as_a_member(demo_masks_folder, demo_masked_shards):
    _, masks = demo_masks_folder
    description = json.loads((demo_masked_shards / "dataset.json").read_text())
    assert description["segmentation"] == {"member": "seg.png", "classes": 11, "ignore_index": 255,
                                           "masks": str(masks)}
    assert description["options"]["masks"] == str(masks)
    sources = {row["key"]: row["source"] for row in read_manifest(demo_masked_shards / "manifest.parquet")}
    dataset = load_dataset_info(demo_masked_shards)
    shard = dataset.split("train").shards[0]
    with tarfile.open(shard) as archive:
        names = archive.getnames()
        key = names[0].split(".")[0]
        assert f"{key}.seg.png" in names
        stored = decode_mask(archive.extractfile(f"{key}.seg.png").read())
    original = np.asarray(Image.open(masks / sources[key].replace(".jpg", ".png")))
    assert np.array_equal(stored, original)
    entries = read_index_entries(dataset.split("train").indexes[0])
    assert all("seg.png" in components for _, components in entries)
    assert verify(demo_masked_shards).ok


def test_missing_wrong_or_misplaced_masks(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for name, size in (("a", (20, 10)), ("b", (20, 10)), ("c", (20, 10)), ("d", (24, 12))):
        (images / "things").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (200, 10, 10)).save(images / "things" / f"{name}.png")
    (masks / "things").mkdir(parents=True)
    Image.fromarray(np.full((10, 20), 2, np.uint8)).save(masks / "things" / "a.png")
    Image.new("RGB", (20, 10)).save(masks / "things" / "b.png")  # colour, not class indices
    Image.fromarray(np.ones((10, 20), np.uint8)).save(masks / "things" / "d.png")  # another size
    summary = convert(images, tmp_path / "out", workers=1, progress=False, masks=masks, max_side=12)
    assert summary.counts == {"train": 1} and summary.skipped == 3
    reasons = sorted(json.loads(line)["reason"] for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines())
    assert reasons == ["mask things/b.png is a RGB image; expected one channel of class indices (L or P)",
                       "mask things/d.png is 20x10, its image 24x12", f"no mask things/c.png in {masks}"]
    (mask,) = first_masks(load_dataset_info(tmp_path / "out"), "train", 1)
    assert mask.shape == (6, 12) and set(np.unique(mask)) == {2}  # shrunk with the image by --max-side
    with pytest.raises(DatasetError, match="--masks lies inside the images folder"):
        convert(images, tmp_path / "other", workers=1, progress=False, masks=images / "things")
    with pytest.raises(DatasetError, match="--masks no such folder"):
        convert(images, tmp_path / "other", workers=1, progress=False, masks=tmp_path / "nowhere")


def test_verify_finds_a_mask_that_does_not_fit(demo_masked_shards, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(demo_masked_shards, copy)
    shard = load_dataset_info(copy).split("val").shards[0]
    key, components = read_index_entries(shard.with_suffix(".idx"))[0]
    offset, size = components["seg.png"]
    with open(shard, "r+b") as handle:
        handle.seek(offset + 20)
        handle.write(b"\x00" * min(40, size - 20))
    problems = [problem for problem in verify(copy).problems if problem.key == key]
    assert problems and "mask .seg.png does not decode" in problems[0].message


def test_preview_draws_the_masks(demo_masked_shards, demo_shards, tmp_path):
    with_masks = render_preview(demo_masked_shards, "simclr", tmp_path / "m.png", count=2, image_size=32)
    without = render_preview(demo_shards, "simclr", tmp_path / "p.png", count=2, image_size=32)
    assert Image.open(with_masks).width > Image.open(without).width  # one more panel per row: the mask


def test_eval_loader_masks_are_the_stored_masks(demo_masked_shards):
    dataset = load_dataset_info(demo_masked_shards)
    loader = build_segmentation_loader(dataset, split="val", size=64, batch_size=16, train=False)
    loaded = [mask for batch in loader for mask in mask_batch(batch).numpy()]
    assert len(loaded) == 40
    stored = first_masks(dataset, "val", 40)
    assert all(np.array_equal(a, b) for a, b in zip(loaded, stored))  # native size: the very label maps


def test_train_crops_and_flips_image_and_mask_alike(tmp_path):
    """Masks that are a function of their image (1 where it is white, 0 where black): after a random
    crop, resize and flip of both, the mask must still be that function of the image."""
    images, masks = tmp_path / "images" / "halves", tmp_path / "masks" / "halves"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(24):
        white = np.zeros((48, 64), np.uint8)
        column, row = rng.integers(8, 56), rng.integers(8, 40)
        white[:row, :column] = 1
        white[row:, column:] = 1
        Image.fromarray(np.repeat(white[..., None] * 255, 3, axis=2)).save(images / f"{index:02d}.png")
        Image.fromarray(white).save(masks / f"{index:02d}.png")
    convert(tmp_path / "images", tmp_path / "out", workers=1, progress=False, masks=tmp_path / "masks")
    loader = build_segmentation_loader(load_dataset_info(tmp_path / "out"), split="train", size=32, batch_size=8,
                                       train=True, seed=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    batches = iter(loader)
    agreement = []
    for _ in range(3):
        batch = next(batches)
        bright = batch["image"].mean(dim=1).numpy() > 0  # normalized: white > 0 > black
        agreement.append((bright == (mask_batch(batch).numpy() == 1)).mean())
    assert min(agreement) > 0.97  # only pixels on an edge may differ (bilinear image, nearest mask)
