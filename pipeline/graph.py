"""A recipe -> the DALI graph's outputs, and the torch step that finishes a batch.

`recipe_outputs` is called inside a DALI pipeline definition: it turns every view and the
recipe's pretext spec into named data nodes (all on the GPU when decoding is `mixed`).
`finish_batch` then makes the few outputs that are a pure function of what the graph drew:
masks from per-patch noise or per-sample seeds, the inpainting mask from the region's anchor,
the constant labels of "all four rotations", and integer labels as int64. The batch keys are
listed in `pipeline.recipes`.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from nvidia.dali import fn

from selfsup.pipeline.augment import (
    augmented_view, color_jitter, decode_random_resized_crop, decoded_crops, random_gaussian_blur, random_solarize,
)
from selfsup.pipeline.masks import block_masks, random_patch_masks
from selfsup.pipeline.permutations import jigsaw_permutations, load_permutations
from selfsup.pipeline.pretext import (
    ColorizationSpec, DenoisingSpec, InpaintingSpec, JigsawSpec, MaskSpec, RelativeLocationSpec, RotationSpec,
    SuperResolutionSpec,
)
from selfsup.pipeline.pretext_ops import (
    all_rotations, colorization_targets, denoising_views, inpainting_views, jigsaw_view, normalize_chw, random_flip,
    random_integer, region_side, relative_patches, rotate_quarter_turns, super_resolution_views,
)
from selfsup.pipeline.recipes import Recipe, ViewSpec

INTEGER_LABELS = ("rotation_label", "jigsaw_label", "relative_label", "ab_bins")


@functools.lru_cache(maxsize=8)
def recipe_permutations(spec: JigsawSpec) -> np.ndarray:
    """The jigsaw permutation set a spec names: (K, 9) int64."""
    if spec.permutations_file is not None:
        return load_permutations(spec.permutations_file)
    return jigsaw_permutations(spec.permutation_count, spec.permutation_seed)


def patch_grid(recipe: Recipe) -> tuple[int, int]:
    """The (rows, columns) patch grid of a mask recipe's view."""
    side = recipe.views[0].size // recipe.pretext.patch_size
    return side, side


def plain_view(encoded, view: ViewSpec, decoder_device: str):
    """Crop, colour, blur, solarize, flip; still uint8 HWC (for the pretext ops)."""
    images = decode_random_resized_crop(encoded, view, decoder_device)
    images = random_solarize(random_gaussian_blur(color_jitter(images, view), view), view)
    return random_flip(images, view.flip_probability)


def recipe_outputs(encoded, recipe: Recipe, decoder_device: str) -> dict:
    """encoded image bytes -> {batch key: DALI data node} for every view and pretext label."""
    mean, std, pretext = recipe.mean, recipe.std, recipe.pretext
    if pretext is None or isinstance(pretext, MaskSpec):
        crops = decoded_crops(encoded, recipe.views, decoder_device)
        outputs = {f"view_{index}": augmented_view(crop, view, mean, std)
                   for index, (crop, view) in enumerate(zip(crops, recipe.views))}
        if isinstance(pretext, MaskSpec):
            rows, columns = patch_grid(recipe)
            if pretext.kind == "random":
                outputs["mask_noise"] = fn.random.uniform(range=[0.0, 1.0], shape=[rows * columns])
            else:
                outputs["mask_seed"] = random_integer(0, 2 ** 31 - 1)
        return _on_device(outputs, decoder_device)
    view = recipe.views[0]
    images = plain_view(encoded, view, decoder_device)
    if isinstance(pretext, RotationSpec):
        if pretext.mode == "all":
            outputs = {"view_0": all_rotations(images, mean, std)}
        else:
            turns = random_integer(0, 4)
            outputs = {"view_0": normalize_chw(rotate_quarter_turns(images, turns), mean, std),
                       "rotation_label": turns}
    elif isinstance(pretext, JigsawSpec):
        tiles, label = jigsaw_view(images, view.size, pretext, recipe_permutations(pretext), mean, std)
        outputs = {"jigsaw_tiles": tiles, "jigsaw_label": label}
    elif isinstance(pretext, RelativeLocationSpec):
        patch_a, patch_b, label = relative_patches(images, view.size, pretext, mean, std)
        outputs = {"patch_a": patch_a, "patch_b": patch_b, "relative_label": label}
    elif isinstance(pretext, ColorizationSpec):
        lab_l, ab_target, ab_bins = colorization_targets(images, view.size, pretext)
        outputs = {"lab_l": lab_l, "ab_target": ab_target, "ab_bins": ab_bins}
    elif isinstance(pretext, InpaintingSpec):
        erased, target, anchor = inpainting_views(images, view.size, pretext, mean, std)
        outputs = {"inpaint_input": erased, "inpaint_target": target, "inpaint_anchor": anchor}
    elif isinstance(pretext, SuperResolutionSpec):
        upscaled, target = super_resolution_views(images, view.size, pretext, mean, std)
        outputs = {"sr_input": upscaled, "sr_target": target}
    elif isinstance(pretext, DenoisingSpec):
        corrupted, clean = denoising_views(images, view.size, pretext, mean, std)
        outputs = {"denoise_input": corrupted, "denoise_target": clean}
    else:
        raise TypeError(f"recipe {recipe.name!r}: no graph for pretext {type(pretext).__name__}")
    return _on_device(outputs, decoder_device)


def _on_device(outputs: dict, decoder_device: str) -> dict:
    """With GPU decoding, every output (labels drawn on the CPU included) leaves on the GPU."""
    if decoder_device != "mixed":
        return outputs
    return {name: node.gpu() if node.device == "cpu" else node for name, node in outputs.items()}


def finish_batch(batch: dict[str, torch.Tensor], recipe: Recipe) -> dict[str, torch.Tensor]:
    """The graph's raw outputs -> the documented batch keys (see `pipeline.recipes`)."""
    pretext = recipe.pretext
    if "mask_noise" in batch:  # (B, N) float -> (B, N) bool, exactly round(ratio x N) per row
        batch["mask"] = random_patch_masks(batch.pop("mask_noise"), pretext.ratio)
    if "mask_seed" in batch:  # (B,) int -> (B, N) bool block masks
        batch["mask"] = block_masks(batch.pop("mask_seed").reshape(-1), patch_grid(recipe), pretext.ratio,
                                    pretext.min_block_patches, pretext.block_aspect)
    if "inpaint_anchor" in batch:  # (B, 2) [y, x] -> (B, 1, S, S) bool
        anchor = batch.pop("inpaint_anchor").long()
        size, side = recipe.views[0].size, region_side(recipe.views[0].size, pretext)
        pixels = torch.arange(size, device=anchor.device)
        rows = (pixels >= anchor[:, :1]) & (pixels < anchor[:, :1] + side)  # (B, S)
        columns = (pixels >= anchor[:, 1:]) & (pixels < anchor[:, 1:] + side)  # (B, S)
        batch["inpaint_mask"] = (rows[:, :, None] & columns[:, None, :])[:, None]
    if isinstance(pretext, RotationSpec) and pretext.mode == "all":
        views = batch["view_0"]
        batch["rotation_label"] = torch.arange(4, device=views.device).expand(len(views), 4).clone()
    for name in INTEGER_LABELS:
        if name in batch:
            batch[name] = batch[name].long()
    return batch


__all__ = ["finish_batch", "patch_grid", "plain_view", "recipe_outputs", "recipe_permutations"]
