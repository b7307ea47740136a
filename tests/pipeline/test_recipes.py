"""Every registered recipe builds a graph that runs in CPU mode over real shards, gives the
documented keys, repeats itself under a fixed seed, and refuses malformed declarations."""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest
import torch

from selfsup.pipeline.dataset import load_dataset_info
from selfsup.pipeline.loader import build_train_loader
from selfsup.pipeline.permutations import (
    jigsaw_permutations, load_permutations, minimum_hamming_distance, save_permutations,
)
from selfsup.pipeline.recipes import (
    RECIPES, ViewSpec, build_recipe, byol_recipe, dino_recipe, jigsaw_recipe, recipe_options, recipe_options_type,
    two_views_recipe,
)
from selfsup.errors import RecipeError
from tests.pipeline.pattern_shards import first_batch

B = 4
SMALL = {  # name -> (image_size, options) small enough for a quick CPU run
    "simclr": (24, {}), "supervised": (24, {}), "deepcluster": (24, {}),
    "two_views": (24, {"view_1": {"blur_probability": 0.0}}), "byol": (24, {}),
    "barlow_twins": (24, {}), "vicreg": (24, {}),
    "multicrop": (32, {"local_size": 16, "local_crops": 2}), "dino": (32, {"local_size": 16, "local_crops": 3}),
    "swav": (32, {"local_size": 16, "local_crops": 2}),
    "rotation": (24, {}), "jigsaw": (48, {}), "relative_location": (48, {}),
    "mae": (32, {"patch_size": 8}), "simmim": (32, {"patch_size": 8}), "beit": (32, {"patch_size": 8}),
    "dvae": (24, {}), "colorization": (32, {}), "inpainting": (32, {}), "super_resolution": (32, {}),
    "denoising": (32, {"corruption": "gaussian"}),
}


def expected_shapes(name: str, size: int, options: dict) -> dict[str, tuple]:
    """The batch keys and shapes `pipeline.recipes` documents."""
    if name in ("simclr", "supervised", "two_views", "byol", "barlow_twins", "vicreg"):
        return {"view_0": (B, 3, size, size), "view_1": (B, 3, size, size)}
    if name in ("multicrop", "dino", "swav"):
        small = options["local_size"]
        views = {f"view_{i}": (B, 3, size, size) for i in range(2)}
        return views | {f"view_{i + 2}": (B, 3, small, small) for i in range(options["local_crops"])}
    if name == "deepcluster":
        return {"view_0": (B, 3, size, size)}
    if name == "rotation":
        return {"view_0": (B, 4, 3, size, size), "rotation_label": (B, 4)}
    if name == "jigsaw":
        return {"jigsaw_tiles": (B, 9, 3, 13, 13), "jigsaw_label": (B,)}
    if name == "relative_location":
        return {"patch_a": (B, 3, 11, 11), "patch_b": (B, 3, 11, 11), "relative_label": (B,)}
    if name in ("mae", "simmim", "beit"):
        return {"view_0": (B, 3, size, size), "mask": (B, (size // options["patch_size"]) ** 2)}
    if name == "dvae":
        return {"view_0": (B, 3, size, size)}
    if name == "colorization":
        return {"lab_l": (B, 1, size, size), "ab_target": (B, 2, size, size), "ab_bins": (B, size // 4, size // 4)}
    if name == "super_resolution":
        return {"sr_input": (B, 3, size, size), "sr_target": (B, 3, size, size)}
    if name == "denoising":
        return {"denoise_input": (B, 3, size, size), "denoise_target": (B, 3, size, size)}
    return {"inpaint_input": (B, 3, size, size), "inpaint_target": (B, 3, size, size),
            "inpaint_mask": (B, 1, size, size)}


def test_every_registered_recipe_has_a_small_test_configuration():
    assert set(SMALL) == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_runs_on_cpu_with_documented_keys_and_a_fixed_seed_repeats(demo_shards, name):
    dataset = load_dataset_info(demo_shards)
    size, options = SMALL[name]
    recipe = build_recipe(name, size, **options)

    def batch(seed):
        return first_batch(build_train_loader(dataset, recipe, batch_size=B, seed=seed, num_threads=1))

    first, again, other = batch(7), batch(7), batch(8)
    shapes = expected_shapes(name, size, options) | {"label": (B,), "index": (B,)}
    assert {key: tuple(value.shape) for key, value in first.items()} == shapes
    for key, value in first.items():
        assert not value.is_cuda
        assert torch.equal(value, again[key]), key
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
    assert any(not torch.equal(value, other[key]) for key, value in first.items() if key != "label")


def test_byol_views_are_asymmetric_and_two_views_take_per_view_settings():
    recipe = byol_recipe(224)
    assert [view.blur_probability for view in recipe.views] == [1.0, 0.1]
    assert [view.solarize_probability for view in recipe.views] == [0.0, 0.2]
    recipe = two_views_recipe(96, view_0={"blur_probability": 0.0}, view_1={"scale": [0.5, 1.0]}, hue=0.2)
    assert recipe.views[0].blur_probability == 0.0 and recipe.views[1].scale == (0.5, 1.0)
    assert recipe.views[0].hue == recipe.views[1].hue == 0.2
    assert build_recipe("barlow_twins", 64).name == "barlow_twins"


def test_multicrop_groups_globals_first_with_dino_augmentation():
    recipe = dino_recipe(224, local_crops=6)
    sizes = [view.size for view in recipe.views]
    assert sizes == [224, 224] + [96] * 6
    assert [view.blur_probability for view in recipe.views] == [1.0, 0.1] + [0.5] * 6
    assert [view.solarize_probability for view in recipe.views] == [0.0, 0.2] + [0.0] * 6
    assert recipe.views[0].scale == (0.4, 1.0) and recipe.views[2].scale == (0.05, 0.4)


@pytest.mark.parametrize("name, size, options, message", [
    ("jigsaw", 50, {}, r"image_size=50 must be divisible by 3"),
    ("jigsaw", 48, {"tile_size": 20}, r"tile_size=20 must be an integer in \[4, 16\]"),
    ("jigsaw", 48, {"permutation_count": 1}, r"permutation_count=1"),
    ("rotation", 32, {"mode": "two"}, r"mode='two' must be one of \('all', 'one'\)"),
    ("rotation", 32, {"angles": 4}, r"unknown option\(s\) \['angles'\]; valid options: .*'mode'"),
    ("relative_location", 48, {"patch_size": 14, "jitter": 2}, r"must fit the cell of 16 pixels"),
    ("mae", 32, {"patch_size": 5}, r"patch_size=5 must divide image_size=32"),
    ("mae", 32, {"mask_ratio": 1.0}, r"mask_ratio=1.0 must be in \(0, 1\)"),
    ("beit", 32, {"mask_kind": "blocks"}, r"kind='blocks' must be one of"),
    ("colorization", 30, {}, r"bin_downsample=4 must divide image_size=30"),
    ("inpainting", 32, {"region": "corner"}, r"region='corner' must be one of"),
    ("super_resolution", 30, {}, r"scale_factor=4 must be an integer >= 2 that divides image_size=30"),
    ("super_resolution", 32, {"scale_factor": 1}, r"scale_factor=1 must be an integer >= 2"),
    ("denoising", 32, {"corruption": "blur"}, r"corruption='blur' must be one of \('gaussian', 'masking'\)"),
    ("denoising", 32, {"drop_probability": 1.0}, r"drop_probability=1.0 must be in \(0, 1\)"),
    ("denoising", 32, {"noise_std": 0.0}, r"noise_std=0.0 must be > 0"),
    ("two_views", 32, {"view_0": {"blurr": 0.1}}, r"unknown view option\(s\) \['blurr'\]"),
    ("byol", 32, {"blur_probability": 2.0}, r"blur_probability=2.0 must be a probability"),
    ("dino", 32, {"scale": (0.2, 1.0)}, r"unknown option\(s\) \['scale'\]; valid options: .*'global_scale'"),
    ("swav", 32, {"solarize_probability": 0.2}, r"unknown option\(s\) \['solarize_probability'\]"),
    ("dino", 32, {"local_crops": -1}, r"local_crops=-1 must be an integer >= 0"),
    ("swav", 32, {"local_scale": (0.5, 0.1)}, r"scale=\(0.5, 0.1\) must be \(min, max\)"),
])
def test_malformed_recipes_are_refused_with_a_clear_message(name, size, options, message):
    with pytest.raises(RecipeError, match=message):
        build_recipe(name, size, **options)


def test_a_multicrop_builder_refuses_the_options_it_sets_per_crop():
    with pytest.raises(RecipeError, match=r"\['blur_probability', 'scale'\] are set per crop; use global_scale"):
        dino_recipe(32, blur_probability=0.0, scale=(0.2, 1.0))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_has_an_options_dataclass_from_its_builder(name):
    options = recipe_options_type(name)
    assert dataclasses.is_dataclass(options) and recipe_options_type(name) is options
    fields = {field.name: field for field in dataclasses.fields(options)}
    assert sorted(fields) == recipe_options(name) and "image_size" not in fields
    defaults = options()  # every option has a default: the builder's, or None (the recipe's own)
    given = {key: value for key, value in dataclasses.asdict(defaults).items() if value is not None}
    assert build_recipe(name, SMALL[name][0], **{**given, **SMALL[name][1]}) == build_recipe(name, SMALL[name][0],
                                                                                             **SMALL[name][1])


def test_recipe_options_carry_the_builders_annotations():
    fields = {field.name: field for field in dataclasses.fields(recipe_options_type("rotation"))}
    assert fields["mode"].type == typing.Literal["all", "one"] and fields["mode"].default == "all"
    assert fields["scale"].type == typing.Optional[tuple[float, float]] and fields["scale"].default is None
    swav = {field.name: field.default for field in dataclasses.fields(recipe_options_type("swav"))}
    assert swav["global_blur"] == (0.5, 0.5) and "scale" not in swav and "blur_probability" not in swav
    assert build_recipe("simclr", 32, hue=None) == build_recipe("simclr", 32)  # None: the recipe's default


def test_jigsaw_permutations_are_deterministic_distinct_and_far_apart(tmp_path):
    permutations = jigsaw_permutations(100, seed=0)
    assert permutations.shape == (100, 9)
    assert np.array_equal(permutations, jigsaw_permutations(100, seed=0))
    assert not np.array_equal(permutations, jigsaw_permutations(100, seed=1))
    assert (np.sort(permutations, axis=1) == np.arange(9)).all()
    assert len(np.unique(permutations, axis=0)) == 100
    assert minimum_hamming_distance(permutations) >= 6
    path = save_permutations(tmp_path / "permutations.npy", permutations)
    assert np.array_equal(load_permutations(path), permutations)
    recipe = jigsaw_recipe(48, permutations_file=str(path))
    assert recipe.pretext.permutations_file == str(path)
    np.save(tmp_path / "bad.npy", np.zeros((3, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="permutation of 0..8"):
        load_permutations(tmp_path / "bad.npy")


def test_a_thousand_permutations_are_supported():
    permutations = jigsaw_permutations(1000, seed=0)
    assert len(np.unique(permutations, axis=0)) == 1000 and minimum_hamming_distance(permutations) >= 5


def test_simclr_recipe_keeps_its_view_options():
    recipe = build_recipe("simclr", 64, scale=[0.25, 1.0], blur_probability=0.0, solarize_probability=0.1)
    assert recipe.views[0] == recipe.views[1]
    assert recipe.views[0] == ViewSpec(size=64, scale=(0.25, 1.0), blur_probability=0.0, solarize_probability=0.1)
