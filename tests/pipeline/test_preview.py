"""`render_preview` draws every recipe into a PNG a person can check."""

from __future__ import annotations

import pytest
from PIL import Image

from selfsup.pipeline.preview import render_preview
from selfsup.pipeline.recipes import RECIPES

SMALL = {"jigsaw": (48, {}), "relative_location": (48, {}), "mae": (32, {"patch_size": 8}),
         "simmim": (32, {"patch_size": 8}), "beit": (32, {"patch_size": 4}),
         "dino": (32, {"local_size": 16, "local_crops": 2}), "swav": (32, {"local_size": 16, "local_crops": 2}),
         "multicrop": (32, {"local_size": 16, "local_crops": 2}), "rotation": (32, {"mode": "one"})}


# one recipe per kind of picture (the others share a drawing with one of these)
KINDS = ["byol", "dino", "rotation", "jigsaw", "relative_location", "mae", "beit", "colorization", "inpainting",
         "super_resolution", "denoising"]


def test_the_kinds_cover_every_pretext():
    from selfsup.pipeline.recipes import build_recipe

    pretexts = {type(build_recipe(name, SMALL.get(name, (48, {}))[0], **SMALL.get(name, (48, {}))[1]).pretext)
                for name in RECIPES}
    assert pretexts == {type(build_recipe(name, SMALL.get(name, (48, {}))[0],
                                          **SMALL.get(name, (48, {}))[1]).pretext) for name in KINDS}


@pytest.mark.parametrize("name", KINDS)
def test_every_recipe_renders_a_preview(demo_shards, tmp_path, name):
    size, options = SMALL.get(name, (32, {}))
    path = render_preview(demo_shards, name, tmp_path / f"{name}.png", count=2, image_size=size, options=options)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 2 * 100
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # pictures, not an empty sheet


def test_same_seed_same_picture(demo_shards, tmp_path):
    first = render_preview(demo_shards, "rotation", tmp_path / "a.png", count=2, image_size=32, seed=3)
    second = render_preview(demo_shards, "rotation", tmp_path / "b.png", count=2, image_size=32, seed=3)
    assert first.read_bytes() == second.read_bytes()
