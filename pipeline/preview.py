"""A picture of what a recipe feeds a method: originals beside their views, pretext labels drawn.

`render_preview(data, recipe, output)` reads the first `count` samples of a converted dataset
(in shard order), runs them through the recipe's DALI graph in CPU mode with a fixed seed, and
draws one row per sample: the original image, then the views as the network gets them
(de-normalized) with the labels spelled out: rotation angles, the jigsaw permutation index and
the tiles put back in order, the relative position of the second patch, the mask over the
view, L and ab (and the quantized ab bins) for colorization, input/target/mask for inpainting,
input/target for super-resolution and denoising. A dataset converted with masks shows each
sample's label map beside its original. PIL only.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from PIL import Image, ImageDraw

from selfsup.pipeline.dataset import load_dataset_info
from selfsup.pipeline.graph import finish_batch, patch_grid, recipe_outputs, recipe_permutations
from selfsup.pipeline.lab import in_gamut_bins, lab_to_srgb
from selfsup.pipeline.loader import diagnosis, read_shards, shut_down
from selfsup.pipeline.pretext import (
    ColorizationSpec, DenoisingSpec, InpaintingSpec, JigsawSpec, MaskSpec, RelativeLocationSpec, RotationSpec,
    SuperResolutionSpec,
)
from selfsup.pipeline.recipes import RECIPES, Recipe, build_recipe
from selfsup.pipeline.segmentation_masks import colour_mask, dataset_segmentation, first_masks
from selfsup.errors import RecipeError

ROW = 128  # pixel height of a row's main pictures
GAP = 6
CAPTION = 14
BACKGROUND = (245, 245, 245)
NEIGHBOUR_NAMES = ("top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right")


def _default_size(name: str) -> int:
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    return inspect.signature(RECIPES[name]).parameters["image_size"].default


def _preview_batch(data: Path, recipe: Recipe, count: int, seed: int) -> dict[str, torch.Tensor]:
    """The first `count` samples in shard order: `original` (count, ROW, ROW, 3) uint8 + the recipe's keys."""
    dataset = load_dataset_info(data)
    split = dataset.split("train" if "train" in dataset.splits else next(iter(dataset.splits)))
    names: list[str] = []

    @pipeline_def(enable_conditionals=True)
    def preview_pipeline():
        encoded = read_shards([str(p) for p in split.shards], [str(p) for p in split.indexes],
                              labeled=False, random_shuffle=False)[0]
        outputs = recipe_outputs(encoded, recipe, "cpu")
        original = fn.decoders.image(encoded, device="cpu", output_type=types.RGB)
        outputs["original"] = fn.resize(original, size=[ROW, ROW], mode="not_larger")
        names.extend(outputs)
        return tuple(outputs.values())

    pipe = preview_pipeline(batch_size=count, num_threads=1, device_id=None, seed=seed)
    pipe.build()
    try:
        results = pipe.run()
    except RuntimeError:  # DALI names neither shard nor sample: find them
        shut_down(pipe)  # DALI's pipeline is no longer valid
        found = diagnosis(dataset, split.name, [str(p) for p in split.shards], [str(p) for p in split.indexes],
                          lambda handed: (0, count), None)(0, True)
        if found is None:
            raise
        raise found from None
    batch = {}
    for name, output in zip(names, results):
        samples = [np.array(output[index]) for index in range(count)]
        if name == "original":
            batch[name] = samples  # differing shapes
        else:
            batch[name] = torch.from_numpy(np.stack(samples))
    originals = batch.pop("original")
    batch = finish_batch(batch, recipe)
    batch["original"] = originals
    return batch


def _pixels(normalized: torch.Tensor, recipe: Recipe) -> Image.Image:
    """(3, h, w) normalized float -> a PIL image."""
    mean = torch.tensor(recipe.mean).view(3, 1, 1)
    std = torch.tensor(recipe.std).view(3, 1, 1)
    array = ((normalized * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def _stretched(tile: torch.Tensor) -> Image.Image:
    """(3, h, w) standardized tile -> a PIL image, each channel stretched to its own range."""
    low = tile.amin(dim=(1, 2), keepdim=True)
    high = tile.amax(dim=(1, 2), keepdim=True)
    array = ((tile - low) / (high - low).clamp_min(1e-6) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def _scaled(image: Image.Image, height: int) -> Image.Image:
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), Image.NEAREST)


def _grid(tiles: list[Image.Image], gap: int = 2) -> Image.Image:
    """Nine equal tiles -> a 3 x 3 picture with thin gaps."""
    size = tiles[0].width
    canvas = Image.new("RGB", (3 * size + 2 * gap, 3 * size + 2 * gap), (255, 255, 255))
    for index, tile in enumerate(tiles):
        row, column = divmod(index, 3)
        canvas.paste(tile, (column * (size + gap), row * (size + gap)))
    return canvas


def _mask_overlay(view: Image.Image, mask: torch.Tensor, grid: tuple[int, int]) -> Image.Image:
    """Masked patches darkened and tinted: mask (N,) bool on a (rows, columns) grid."""
    rows, columns = grid
    cells = mask.view(rows, columns).numpy().astype(np.uint8) * 255
    alpha = Image.fromarray(cells).resize(view.size, Image.NEAREST)
    shade = Image.new("RGB", view.size, (40, 40, 90))
    return Image.composite(Image.blend(view, shade, 0.75), view, alpha)


def _ab_picture(ab: np.ndarray) -> Image.Image:
    """(h, w, 2) ab -> the colours at L = 60."""
    lab = np.concatenate([np.full(ab.shape[:2] + (1,), 60.0), ab], axis=-1)
    return Image.fromarray((lab_to_srgb(lab) * 255).round().astype(np.uint8))


def _panels(batch: dict, index: int, recipe: Recipe) -> list[tuple[Image.Image, str]]:
    """The pictures (with captions) that follow the original in sample `index`'s row."""
    pretext = recipe.pretext
    if pretext is None:
        scale = ROW / recipe.views[0].size
        return [(_scaled(_pixels(batch[f"view_{v}"][index], recipe), round(view.size * scale)), f"view_{v}")
                for v, view in enumerate(recipe.views)]
    if isinstance(pretext, MaskSpec):
        view = _pixels(batch["view_0"][index], recipe)
        mask = batch["mask"][index]
        overlay = _mask_overlay(view, mask, patch_grid(recipe))
        return [(_scaled(view, ROW), "view_0"),
                (_scaled(overlay, ROW), f"mask {int(mask.sum())}/{mask.numel()}")]
    if isinstance(pretext, RotationSpec):
        labels = batch["rotation_label"][index]
        if pretext.mode == "all":
            return [(_scaled(_pixels(view, recipe), ROW), f"label {k}: {90 * k} deg")
                    for k, view in zip(labels.tolist(), batch["view_0"][index])]
        turns = int(labels)
        view = _pixels(batch["view_0"][index], recipe)
        upright = Image.fromarray(np.ascontiguousarray(np.rot90(np.asarray(view), -turns)))
        return [(_scaled(view, ROW), f"label {turns}: {90 * turns} deg"), (_scaled(upright, ROW), "undone")]
    if isinstance(pretext, JigsawSpec):
        label = int(batch["jigsaw_label"][index])
        tiles = [_stretched(tile) for tile in batch["jigsaw_tiles"][index]]
        in_order = [None] * 9
        for position, cell in enumerate(recipe_permutations(pretext)[label]):
            in_order[int(cell)] = tiles[position]
        return [(_scaled(_grid(tiles), ROW), f"as fed, perm #{label}"),
                (_scaled(_grid(in_order), ROW), "put back in order")]
    if isinstance(pretext, RelativeLocationSpec):
        label = int(batch["relative_label"][index])
        size = pretext.patch_size
        canvas = Image.new("RGB", (3 * size + 4, 3 * size + 4), (255, 255, 255))
        cell = (0, 1, 2, 3, 5, 6, 7, 8)[label]
        for patch, where in ((batch["patch_a"][index], 4), (batch["patch_b"][index], cell)):
            row, column = divmod(where, 3)
            canvas.paste(_pixels(patch, recipe), (column * (size + 2), row * (size + 2)))
        return [(_scaled(_pixels(batch["patch_a"][index], recipe), ROW // 2), "patch_a"),
                (_scaled(_pixels(batch["patch_b"][index], recipe), ROW // 2), "patch_b"),
                (_scaled(canvas, ROW), f"label {label}: {NEIGHBOUR_NAMES[label]}")]
    if isinstance(pretext, ColorizationSpec):
        lightness = (batch["lab_l"][index, 0] + 50).numpy()  # (S, S) in [0, 100]
        ab = batch["ab_target"][index].permute(1, 2, 0).numpy()  # (S, S, 2)
        gray = Image.fromarray((lightness * 2.55).round().clip(0, 255).astype(np.uint8)).convert("RGB")
        both = Image.fromarray((lab_to_srgb(np.concatenate([lightness[..., None], ab], -1)) * 255)
                               .round().astype(np.uint8))
        binned = in_gamut_bins()[batch["ab_bins"][index].numpy()]  # (S/d, S/d, 2)
        return [(_scaled(gray, ROW), "L (input)"), (_scaled(_ab_picture(ab), ROW), "ab (target)"),
                (_scaled(_ab_picture(binned), ROW), f"ab bins ({len(in_gamut_bins())})"),
                (_scaled(both, ROW), "L + ab")]
    if isinstance(pretext, InpaintingSpec):
        mask = batch["inpaint_mask"][index, 0].numpy().astype(np.uint8) * 255
        return [(_scaled(_pixels(batch["inpaint_input"][index], recipe), ROW), "input"),
                (_scaled(_pixels(batch["inpaint_target"][index], recipe), ROW), "target"),
                (_scaled(Image.fromarray(mask).convert("RGB"), ROW), "mask")]
    if isinstance(pretext, SuperResolutionSpec):
        return [(_scaled(_pixels(batch["sr_input"][index], recipe), ROW), f"input (x{pretext.scale_factor} down, up)"),
                (_scaled(_pixels(batch["sr_target"][index], recipe), ROW), "target")]
    if isinstance(pretext, DenoisingSpec):
        return [(_scaled(_pixels(batch["denoise_input"][index], recipe), ROW), f"input ({pretext.corruption})"),
                (_scaled(_pixels(batch["denoise_target"][index], recipe), ROW), "target")]
    raise TypeError(f"no preview for pretext {type(pretext).__name__}")


def _preview_masks(data: Path, count: int) -> list[tuple[Image.Image, str]]:
    """The label maps of the samples `_preview_batch` shows (none for a dataset without masks),
    coloured and scaled to a row's height."""
    if dataset_segmentation(data) is None:
        return []
    dataset = load_dataset_info(data)
    split = "train" if "train" in dataset.splits else next(iter(dataset.splits))
    return [(_scaled(colour_mask(mask), ROW), "mask") for mask in first_masks(dataset, split, count)]


def render_preview(data: str | Path, recipe: str, output: str | Path, *, count: int = 4, seed: int = 0,
                   image_size: int | None = None, options: dict | None = None) -> Path:
    """Draw `count` samples of `data` (a converted dataset) through recipe `recipe` into PNG `output`."""
    built = build_recipe(recipe, image_size or _default_size(recipe), **(options or {}))
    batch = _preview_batch(Path(data), built, count, seed)
    masks = _preview_masks(Path(data), count)
    rows = []
    for index in range(count):
        original = Image.fromarray(batch["original"][index])
        panels = [(original, "original")] + masks[index:index + 1] + _panels(batch, index, built)
        width = sum(picture.width for picture, _ in panels) + GAP * (len(panels) + 1)
        height = max(picture.height for picture, _ in panels) + CAPTION + 2 * GAP
        row = Image.new("RGB", (max(width, 200), height), BACKGROUND)
        draw, x = ImageDraw.Draw(row), GAP
        for picture, caption in panels:
            row.paste(picture, (x, GAP + CAPTION))
            draw.text((x, GAP), caption, fill=(20, 20, 20))
            x += picture.width + GAP
        rows.append(row)
    title = f"recipe {built.name}  (seed {seed}, image_size {built.views[0].size})"
    sheet = Image.new("RGB", (max(row.width for row in rows), sum(row.height for row in rows) + 20),
                      (255, 255, 255))
    ImageDraw.Draw(sheet).text((GAP, 4), title, fill=(0, 0, 0))
    y = 20
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    return output


__all__ = ["render_preview"]
