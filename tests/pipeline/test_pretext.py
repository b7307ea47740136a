"""Pretext labels drawn by the DALI graph are right: rotations, jigsaw, relative location, masks,
Lab, inpainting regions and crop areas, checked on images with known pixel patterns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nvidia.dali import fn, pipeline_def, types

from selfsup.pipeline.dataset import load_dataset_info
from selfsup.pipeline.graph import recipe_permutations
from selfsup.pipeline.lab import ab_to_bins, in_gamut_bins, srgb_to_lab
from selfsup.pipeline.loader import build_train_loader
from selfsup.pipeline.pretext_ops import srgb_to_lab as dali_srgb_to_lab
from selfsup.pipeline.recipes import (
    beit_recipe, colorization_recipe, dino_recipe, inpainting_recipe, jigsaw_recipe, mae_recipe,
    relative_location_recipe, rotation_recipe,
)
from tests.pipeline.pattern_shards import first_batch, noise_images, to_pixels, write_pattern_shards

NEIGHBOUR_CELLS = (0, 1, 2, 3, 5, 6, 7, 8)  # relative label -> cell in reading order


@pytest.fixture(scope="module")
def noise_shards(tmp_path_factory):
    """12 noise images of 48 px, each its own class (label = which image)."""
    images = noise_images(12, 48, seed=3)
    return load_dataset_info(write_pattern_shards(tmp_path_factory.mktemp("noise"), images)), images


@pytest.fixture(scope="module")
def upright_shards(tmp_path_factory):
    """Asymmetric images: red top half, blue bottom half, with a little noise."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(8):
        image = rng.integers(0, 40, size=(64, 64, 3), dtype=np.uint8)
        image[:32, :, 0] += 200
        image[32:, :, 2] += 200
        images.append(image)
    return load_dataset_info(write_pattern_shards(tmp_path_factory.mktemp("upright"), images))


def assert_upright(image: np.ndarray) -> None:
    """(h, w, 3) pixels: red on top, blue at the bottom."""
    top, bottom = image[: len(image) // 4], image[-len(image) // 4:]
    assert top[..., 0].mean() > top[..., 2].mean() + 100
    assert bottom[..., 2].mean() > bottom[..., 0].mean() + 100


def test_one_random_rotation_is_undone_by_its_label(upright_shards):
    recipe = rotation_recipe(32, mode="one", scale=(0.6, 1.0))
    loader = build_train_loader(upright_shards, recipe, batch_size=8, seed=1, num_threads=1)
    labels = []
    for step, batch in zip(range(3), loader):
        pixels = to_pixels(batch["view_0"])  # (B, 32, 32, 3)
        for image, turns in zip(pixels, batch["rotation_label"].tolist()):
            assert_upright(np.rot90(image, -turns))
        labels += batch["rotation_label"].tolist()
    loader.close()
    assert set(labels) == {0, 1, 2, 3}


def test_all_four_rotations_per_image(upright_shards):
    loader = build_train_loader(upright_shards, rotation_recipe(32, mode="all"), batch_size=4, seed=0,
                                num_threads=1)
    batch = first_batch(loader)
    assert batch["view_0"].shape == (4, 4, 3, 32, 32)
    assert batch["rotation_label"].tolist() == [[0, 1, 2, 3]] * 4
    pixels = to_pixels(batch["view_0"])  # (B, 4, 32, 32, 3)
    for views in pixels:
        for turns, image in enumerate(views):
            assert_upright(np.rot90(image, -turns))
        np.testing.assert_allclose(np.rot90(views[0], 1), views[1], atol=1e-3)  # exact quarter turns


def exact_crop_options():
    return {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "flip_probability": 0.0}


def test_jigsaw_tiles_reassemble_under_the_labeled_permutation(noise_shards):
    dataset, images = noise_shards
    recipe = jigsaw_recipe(48, tile_size=16, random_tile_position=False, tile_jitter_probability=0.0,
                           tile_grayscale_probability=0.0, tile_normalization=False, **exact_crop_options())
    permutations = recipe_permutations(recipe.pretext)
    batch = first_batch(build_train_loader(dataset, recipe, batch_size=12, seed=2, num_threads=1))
    assert batch["jigsaw_tiles"].shape == (12, 9, 3, 16, 16)
    tiles = to_pixels(batch["jigsaw_tiles"])  # (B, 9, 16, 16, 3)
    for sample, (label, image_index) in enumerate(zip(batch["jigsaw_label"].tolist(), batch["label"].tolist())):
        canvas = np.zeros((48, 48, 3))
        for position, cell in enumerate(permutations[label]):
            row, column = divmod(int(cell), 3)
            canvas[row * 16:(row + 1) * 16, column * 16:(column + 1) * 16] = tiles[sample, position]
        np.testing.assert_allclose(canvas, images[image_index], atol=0.01)
    assert len(set(batch["jigsaw_label"].tolist())) > 1


def find_offset(patch: np.ndarray, image: np.ndarray, top: int, left: int, offsets) -> tuple[int, int] | None:
    """The (dy, dx) in `offsets` x `offsets` where patch == image[top + dy:, left + dx:], if any."""
    size = len(patch)
    for dy in offsets:
        for dx in offsets:
            window = image[top + dy:top + dy + size, left + dx:left + dx + size]
            if window.shape == patch.shape and np.abs(window - patch).max() < 0.01:
                return dy, dx
    return None


def test_jigsaw_tiles_with_gaps_and_jitter_lie_in_their_cells(noise_shards):
    dataset, images = noise_shards
    recipe = jigsaw_recipe(48, tile_size=12, tile_jitter_probability=0.0, tile_grayscale_probability=0.0,
                           tile_normalization=False, **exact_crop_options())
    permutations = recipe_permutations(recipe.pretext)
    batch = first_batch(build_train_loader(dataset, recipe, batch_size=12, seed=4, num_threads=1))
    tiles = to_pixels(batch["jigsaw_tiles"])
    offsets = set()
    for sample, (label, image_index) in enumerate(zip(batch["jigsaw_label"].tolist(), batch["label"].tolist())):
        for position, cell in enumerate(permutations[label]):
            row, column = divmod(int(cell), 3)
            found = find_offset(tiles[sample, position], images[image_index].astype(float), row * 16,
                                column * 16, range(5))
            assert found is not None, (sample, position)
            offsets.add(found)
    assert len(offsets) > 5  # the tile moves inside its cell


def test_jigsaw_tiles_are_standardized_one_by_one(noise_shards):
    dataset, _ = noise_shards
    batch = first_batch(build_train_loader(dataset, jigsaw_recipe(48), batch_size=4, seed=0, num_threads=1))
    tiles = batch["jigsaw_tiles"].flatten(3)  # (B, 9, 3, t*t)
    assert tiles.mean(dim=3).abs().max() < 1e-3
    assert (tiles.std(dim=3, unbiased=False) - 1).abs().max() < 0.05


def test_relative_location_patches_sit_where_the_label_says(noise_shards):
    dataset, images = noise_shards
    recipe = relative_location_recipe(48, patch_size=10, jitter=2, color_dropping=0.0, **exact_crop_options())
    loader = build_train_loader(dataset, recipe, batch_size=12, seed=5, num_threads=1)
    labels = []
    for _, batch in zip(range(3), loader):
        patch_a, patch_b = to_pixels(batch["patch_a"]), to_pixels(batch["patch_b"])
        for sample, (label, image_index) in enumerate(zip(batch["relative_label"].tolist(),
                                                          batch["label"].tolist())):
            image = images[image_index].astype(float)
            assert find_offset(patch_a[sample], image, 16, 16, range(1, 6)) is not None
            row, column = divmod(NEIGHBOUR_CELLS[label], 3)
            assert find_offset(patch_b[sample], image, row * 16, column * 16, range(1, 6)) is not None
        labels += batch["relative_label"].tolist()
    loader.close()
    assert set(labels) <= set(range(8)) and len(set(labels)) >= 6


def test_colour_dropping_keeps_one_channel(noise_shards):
    dataset, _ = noise_shards
    recipe = relative_location_recipe(48, patch_size=10, color_dropping=1.0)
    batch = first_batch(build_train_loader(dataset, recipe, batch_size=12, seed=0, num_threads=1))
    spread = batch["patch_a"].flatten(2).std(dim=2)  # (B, 3)
    assert ((spread > 0.3).sum(dim=1) == 1).all()
    assert ((spread < 0.05).sum(dim=1) == 2).all()


def test_mae_masks_mask_exactly_the_ratio(demo_shards):
    dataset = load_dataset_info(demo_shards)
    loader = build_train_loader(dataset, mae_recipe(32, patch_size=8), batch_size=16, seed=0, num_threads=1)
    batch = first_batch(loader)
    assert batch["mask"].shape == (16, 16) and batch["mask"].dtype == torch.bool
    assert batch["mask"].sum(dim=1).tolist() == [12] * 16
    assert len({tuple(row.tolist()) for row in batch["mask"]}) > 8  # random per sample


def test_block_masks_stay_near_and_under_the_ratio(demo_shards):
    dataset = load_dataset_info(demo_shards)
    recipe = beit_recipe(64, patch_size=4, mask_ratio=0.4)
    batch = first_batch(build_train_loader(dataset, recipe, batch_size=16, seed=0, num_threads=1))
    counts = batch["mask"].sum(dim=1)
    target = round(0.4 * 256)
    assert batch["mask"].shape == (16, 256)
    assert counts.max() <= target and counts.float().mean() > 0.9 * target
    grid = batch["mask"][0].view(16, 16).int()
    assert (grid[:, 1:] == grid[:, :-1]).float().mean() > 0.8  # blocks, not salt and pepper


def lab_reference(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab from sRGB (0-255), written from the CIE definitions with epsilon/kappa constants."""
    epsilon, kappa = 216 / 24389, 24389 / 27
    white = (0.950456, 1.0, 1.088754)
    out = []
    for red, green, blue in rgb.reshape(-1, 3) / 255.0:
        linear = [((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92 for c in (red, green, blue)]
        x = 0.412453 * linear[0] + 0.357580 * linear[1] + 0.180423 * linear[2]
        y = 0.212671 * linear[0] + 0.715160 * linear[1] + 0.072169 * linear[2]
        z = 0.019334 * linear[0] + 0.119193 * linear[1] + 0.950227 * linear[2]
        f = [t ** (1 / 3) if t > epsilon else (kappa * t + 16) / 116
             for t in (x / white[0], y / white[1], z / white[2])]
        out.append((116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])))
    return np.array(out).reshape(rgb.shape)


def test_lab_conversion_in_the_graph_matches_the_cie_formulas():
    rng = np.random.default_rng(0)
    corners = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128],
                        [10, 10, 10], [255, 255, 0]], dtype=np.uint8)
    rgb = np.concatenate([corners, rng.integers(0, 256, size=(56, 3), dtype=np.uint8)]).reshape(8, 8, 3)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, seed=0)
    def lab_pipeline():
        images = fn.external_source(source=lambda: [rgb], batch=True, layout="HWC", dtype=types.UINT8)
        lightness, a, b = dali_srgb_to_lab(images)
        return lightness, a, b

    pipe = lab_pipeline()
    pipe.build()
    graph = np.stack([np.array(output[0]) for output in pipe.run()], axis=-1)  # (8, 8, 3)
    reference = lab_reference(rgb)
    np.testing.assert_allclose(graph, reference, atol=0.05)
    np.testing.assert_allclose(srgb_to_lab(rgb / 255.0), reference, atol=0.01)
    np.testing.assert_allclose(reference[0, 1], [100, 0, 0], atol=0.01)  # white
    np.testing.assert_allclose(reference[0, 2], [53.24, 80.09, 67.20], atol=0.05)  # red


def test_colorization_targets_and_bins(demo_shards):
    dataset = load_dataset_info(demo_shards)
    recipe = colorization_recipe(32, bin_downsample=1)
    batch = first_batch(build_train_loader(dataset, recipe, batch_size=8, seed=0, num_threads=1))
    assert batch["lab_l"].shape == (8, 1, 32, 32) and batch["ab_bins"].dtype == torch.int64
    assert batch["lab_l"].min() >= -50.01 and batch["lab_l"].max() <= 50.01
    bins = ab_to_bins(batch["ab_target"].movedim(1, -1).numpy())  # (B, 32, 32)
    assert (bins == batch["ab_bins"].numpy()).mean() > 0.995  # differ only at float ties
    assert batch["ab_bins"].max() < len(in_gamut_bins())


def test_in_gamut_bins_are_deterministic_and_cover_the_gamut():
    bins = in_gamut_bins()
    assert len(bins) == 262 and (bins % 10 == 0).all()
    colours = np.random.default_rng(1).random((2000, 3))
    nearest = bins[ab_to_bins(srgb_to_lab(colours)[:, 1:])]
    assert np.abs(nearest - srgb_to_lab(colours)[:, 1:]).max() <= 5.0 + 1e-9  # every colour in its own bin


@pytest.mark.parametrize("region", ["center", "random"])
def test_inpainting_removes_the_masked_region(demo_shards, region):
    dataset = load_dataset_info(demo_shards)
    recipe = inpainting_recipe(32, region=region, region_fraction=0.5)
    batch = first_batch(build_train_loader(dataset, recipe, batch_size=8, seed=0, num_threads=1))
    mask = batch["inpaint_mask"]  # (B, 1, 32, 32)
    assert mask.shape == (8, 1, 32, 32) and mask.dtype == torch.bool
    assert mask.sum(dim=(1, 2, 3)).tolist() == [256] * 8
    inside = mask.expand_as(batch["inpaint_input"])
    assert (batch["inpaint_input"][inside] == 0).all()
    assert torch.equal(batch["inpaint_input"][~inside], batch["inpaint_target"][~inside])
    if region == "center":
        assert mask[:, 0, 8:24, 8:24].all()
    else:
        assert len({tuple(m.nonzero()[0].tolist()) for m in mask}) > 1


@pytest.fixture(scope="module")
def coordinate_shards(tmp_path_factory):
    """One 256 x 256 image whose red value is x and green value is y."""
    y, x = np.mgrid[0:256, 0:256]
    image = np.stack([x, y, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    return load_dataset_info(write_pattern_shards(tmp_path_factory.mktemp("coordinates"), [image] * 4))


def source_box(view: np.ndarray) -> tuple[float, float]:
    """(h, w, 3) pixels of a view of the coordinate image -> (width, height) of its source region."""
    out_h, out_w = view.shape[:2]
    width = (view[..., 0].max() - view[..., 0].min()) * out_w / (out_w - 1)
    height = (view[..., 1].max() - view[..., 1].min()) * out_h / (out_h - 1)
    return width, height


def test_crop_areas_stay_within_their_scale_bounds(coordinate_shards):
    recipe = dino_recipe(64, local_crops=2, local_size=32, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4),
                         jitter_probability=0.0, grayscale_probability=0.0, flip_probability=0.0,
                         global_blur=(0.0, 0.0), global_solarize=(0.0, 0.0), local_blur=0.0)
    loader = build_train_loader(coordinate_shards, recipe, batch_size=4, seed=0, num_threads=1)
    areas = {"global": [], "local": []}
    for _, batch in zip(range(8), loader):
        for index in range(4):
            for view in to_pixels(batch[f"view_{index}"]):
                width, height = source_box(view)
                areas["global" if index < 2 else "local"].append(width * height / 256 ** 2)
                assert 3 / 4 / 1.1 <= width / height <= 4 / 3 * 1.1
    loader.close()
    assert 0.4 * 0.95 <= min(areas["global"]) and max(areas["global"]) <= 1.0 + 1e-6
    assert 0.05 * 0.9 <= min(areas["local"]) and max(areas["local"]) <= 0.4 * 1.05
    assert max(areas["global"]) - min(areas["global"]) > 0.2  # random, not fixed


def test_unit_ranges_of_integer_draws_are_uniform():
    from selfsup.pipeline.pretext_ops import random_integer

    @pipeline_def(batch_size=4000, num_threads=1, device_id=None, seed=0)
    def draws():
        return random_integer(0, 4)

    pipe = draws()
    pipe.build()
    values = np.array(pipe.run()[0].as_tensor())
    counts = np.bincount(values, minlength=4)
    assert len(counts) == 4 and counts.min() > 4000 / 4 * 0.85
    assert math.isclose(counts.sum(), 4000)
