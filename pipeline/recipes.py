"""View recipes: what a method asks the data pipeline for, declared as data.

A recipe names the views a method needs (how many crops, their size and scale, which colour,
blur and solarize augmentations with which probabilities) and the labels that travel with them
(`pretext`: a spec from `pipeline.pretext`). `pipeline.graph` turns a recipe into one DALI
graph; nothing in here imports DALI, so a recipe can be built, validated and printed anywhere.

Recipes (`RECIPES`, built by `build_recipe(name, image_size, **options)`) and their batch keys
(B = batch size, S = image_size; `label` (B,) is added for labeled datasets, and the train
loader adds `index` (B,), each sample's position in its split). A recipe's options (a config's
`data.recipe`) are its builder's parameters, plus the `ViewSpec` fields where it takes view
options; `recipe_options_type(name)` gives them as a dataclass with the builder's annotations,
which the trainer's config reads `data.recipe` into:

| recipe | for | keys |
|---|---|---|
| simclr, two_views | SimCLR, MoCo, NNCLR, SimSiam | view_0, view_1 (B, 3, S, S) |
| supervised | cross-entropy on the class labels | SimCLR's view_0, view_1 (B, 3, S, S), label (B,) |
| deepcluster | DeepCluster, ODC: one view | view_0 (B, 3, S, S) |
| byol, barlow_twins, vicreg | BYOL-style asymmetric pair | view_0, view_1 (B, 3, S, S) |
| dino, swav, multicrop | multi-crop | view_0, view_1 (B, 3, S, S) globals, view_2.. (B, 3, s, s) locals |
| rotation | RotNet | view_0 (B, 4, 3, S, S) or (B, 3, S, S), rotation_label (B, 4) or (B,) |
| jigsaw | Noroozi & Favaro | jigsaw_tiles (B, 9, 3, t, t), jigsaw_label (B,) |
| relative_location | Doersch et al. | patch_a, patch_b (B, 3, p, p), relative_label (B,) |
| mae, simmim, beit | masked image modeling | view_0 (B, 3, S, S), mask (B, N) bool |
| dvae | BEiT's tokenizer (DALL-E's dVAE) | view_0 (B, 3, S, S) |
| colorization | Zhang et al. | lab_l (B, 1, S, S), ab_target (B, 2, S, S), ab_bins (B, S/4, S/4) |
| inpainting | context encoders | inpaint_input, inpaint_target (B, 3, S, S), inpaint_mask (B, 1, S, S) |
| super_resolution | SRGAN | sr_input (bicubic x4 down and up again), sr_target (B, 3, S, S) |
| denoising | denoising autoencoders | denoise_input (corrupted), denoise_target (B, 3, S, S) |

Defaults follow the SimCLR paper (Chen et al. 2020, appendix A): random resized crop with scale
0.08-1 and aspect 3/4-4/3, horizontal flip, colour jitter (0.4, 0.4, 0.2, 0.1) applied with
p=0.8, grayscale with p=0.2 and Gaussian blur with sigma in [0.1, 2.0].
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Literal, Optional

from selfsup.pipeline.pretext import (
    ColorizationSpec, DenoisingSpec, InpaintingSpec, JigsawSpec, MaskSpec, PretextSpec, RelativeLocationSpec,
    RotationSpec, SuperResolutionSpec, pretext_problems,
)
from selfsup.errors import RecipeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewSpec:
    """One augmented crop of the input image.

    Probabilities are per sample and drawn inside the DALI graph. `hue` is a fraction of the
    full colour circle (0.1 = +-36 degrees), as in torchvision's ColorJitter.
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    jitter_probability: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_probability: float = 0.2
    blur_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_probability: float = 0.0


@dataclass(frozen=True)
class Recipe:
    """A method's inputs: a tuple of views, whether the class label travels with them, and at
    most one pretext task. With a pretext, `views[0]` declares the crop it works on (and is the
    only view)."""

    name: str
    views: tuple[ViewSpec, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    with_label: bool = True
    pretext: PretextSpec | None = None


@dataclass(frozen=True)
class EvalRecipe:
    """Deterministic evaluation view: resize the shorter side to size/crop_fraction, center crop."""

    size: int = 224
    crop_fraction: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def _check_probability(recipe: str, name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise RecipeError(f"recipe {recipe!r}: {name}={value!r} must be a probability in [0, 1]")


def _check_range(recipe: str, name: str, value: tuple[float, float], low: float, high: float) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise RecipeError(
            f"recipe {recipe!r}: {name}={tuple(value)!r} must be (min, max) with "
            f"{low} <= min <= max <= {high}"
        )


def validate_view(recipe: str, view: ViewSpec) -> None:
    """Raise RecipeError when a view cannot be turned into a graph."""
    if not isinstance(view.size, int) or view.size < 8:
        raise RecipeError(f"recipe {recipe!r}: size={view.size!r} must be an integer >= 8 pixels")
    _check_range(recipe, "scale", view.scale, 1e-4, 1.0)
    _check_range(recipe, "ratio", view.ratio, 1e-2, 100.0)
    _check_range(recipe, "blur_sigma", view.blur_sigma, 1e-3, 100.0)
    for name in ("flip_probability", "jitter_probability", "grayscale_probability",
                 "blur_probability", "solarize_probability"):
        _check_probability(recipe, name, getattr(view, name))
    for name in ("brightness", "contrast", "saturation"):
        if not 0.0 <= getattr(view, name) < 1.0:
            raise RecipeError(f"recipe {recipe!r}: {name}={getattr(view, name)!r} must be in [0, 1)")
    if not 0.0 <= view.hue <= 0.5:
        raise RecipeError(f"recipe {recipe!r}: hue={view.hue!r} must be in [0, 0.5]")


def validate_recipe(recipe: Recipe) -> Recipe:
    """Check every view of a recipe; return it unchanged so calls can be chained."""
    if not recipe.views:
        raise RecipeError(f"recipe {recipe.name!r}: needs at least one view")
    for view in recipe.views:
        if not isinstance(view, ViewSpec):
            raise RecipeError(f"recipe {recipe.name!r}: views must be ViewSpec, got {type(view).__name__}")
        validate_view(recipe.name, view)
    if recipe.pretext is not None:
        if len(recipe.views) != 1:
            raise RecipeError(f"recipe {recipe.name!r}: a pretext recipe has exactly one view, "
                              f"got {len(recipe.views)}")
        problems = pretext_problems(recipe.pretext, recipe.views[0].size)
        if problems:
            raise RecipeError(f"recipe {recipe.name!r}: " + "; ".join(problems))
    return recipe


VIEW_OPTIONS = tuple(field.name for field in dataclasses.fields(ViewSpec) if field.name != "size")
# View fields a multi-crop recipe sets per crop from its own options (global_scale / local_scale,
# global_blur / local_blur, global_solarize) rather than once for every crop.
PER_CROP_VIEW_OPTIONS = ("scale", "blur_probability", "solarize_probability")
PLAIN_VIEW = {"jitter_probability": 0.0, "grayscale_probability": 0.0, "blur_probability": 0.0}


def _as_tuples(options: dict) -> dict:
    """YAML gives lists; frozen dataclasses want hashable tuples."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in options.items()}


def _view(recipe: str, size: int, defaults: dict, options: dict | None) -> ViewSpec:
    """A ViewSpec from recipe defaults overridden by user options (view fields only)."""
    options = _as_tuples(options or {})
    unknown = sorted(set(options) - set(VIEW_OPTIONS))
    if unknown:
        raise RecipeError(f"recipe {recipe!r}: unknown view option(s) {unknown}; valid: {sorted(VIEW_OPTIONS)}")
    return ViewSpec(size=size, **{**defaults, **options})


def simclr_recipe(image_size: int = 224, solarize_probability: float = 0.0, **view_options) -> Recipe:
    """SimCLR's two identically distributed views (Chen et al. 2020)."""
    view = _view("simclr", image_size, {"solarize_probability": solarize_probability}, view_options)
    return validate_recipe(Recipe(name="simclr", views=(view, view)))


def deepcluster_recipe(image_size: int = 224, **view_options) -> Recipe:
    """One view (DeepCluster, ODC as OpenSelfSup trains them; Caron et al. 2018, Zhan et al. 2020):
    crop 0.08-1, flip, colour jitter (0.4, 0.4, 0.9, 0.5) on every image, grayscale p=0.2, no blur."""
    defaults = {"jitter_probability": 1.0, "saturation": 0.9, "hue": 0.5, "blur_probability": 0.0}
    view = _view("deepcluster", image_size, defaults, view_options)
    return validate_recipe(Recipe(name="deepcluster", views=(view,)))


def _pair(name: str, image_size: int, defaults: tuple[dict, dict], view_0: dict | None,
          view_1: dict | None, shared: dict) -> Recipe:
    """Two views: recipe defaults per view < options shared by both < per-view overrides."""
    views = tuple(_view(name, image_size, {**default, **_as_tuples(shared)}, overrides)
                  for default, overrides in zip(defaults, (view_0, view_1)))
    return validate_recipe(Recipe(name=name, views=views))


def two_views_recipe(image_size: int = 224, view_0: dict | None = None, view_1: dict | None = None,
                     **view_options) -> Recipe:
    """Two views with per-view settings: `view_options` apply to both, `view_0`/`view_1` (dicts of
    ViewSpec fields) to one; SimCLR defaults otherwise."""
    return _pair("two_views", image_size, ({}, {}), view_0, view_1, view_options)


def byol_recipe(image_size: int = 224, view_0: dict | None = None, view_1: dict | None = None,
                **view_options) -> Recipe:
    """BYOL's asymmetric pair (Grill et al. 2020, table 6): blur p=1.0 / 0.1, solarize p=0 / 0.2,
    colour jitter (0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale p=0.2. Also Barlow Twins and VICReg."""
    defaults = ({"blur_probability": 1.0, "solarize_probability": 0.0},
                {"blur_probability": 0.1, "solarize_probability": 0.2})
    return _pair("byol", image_size, defaults, view_0, view_1, view_options)


def multicrop_recipe(image_size: int = 224, local_crops: int = 6, local_size: int = 96,
                     global_scale: tuple[float, float] = (0.4, 1.0),
                     local_scale: tuple[float, float] = (0.05, 0.4),
                     global_blur: tuple[float, float] = (1.0, 0.1),
                     global_solarize: tuple[float, float] = (0.0, 0.2), local_blur: float = 0.5,
                     _name: str = "multicrop", **view_options) -> Recipe:
    """Multi-crop (Caron et al. 2020; 2021): two global crops of `image_size` then `local_crops`
    crops of `local_size` (views grouped by resolution, globals first). Per-crop augmentation as in
    DINO: global 1 blur p=1.0; global 2 blur p=0.1 + solarize p=0.2; locals blur p=0.5."""
    if not isinstance(local_crops, int) or local_crops < 0:
        raise RecipeError(f"recipe {_name!r}: local_crops={local_crops!r} must be an integer >= 0")
    per_crop = sorted(set(view_options) & set(PER_CROP_VIEW_OPTIONS))
    if per_crop:
        raise RecipeError(f"recipe {_name!r}: {per_crop} are set per crop; use global_scale and local_scale, "
                          "global_blur and local_blur, global_solarize")
    if len(global_blur) != 2 or len(global_solarize) != 2:
        raise RecipeError(f"recipe {_name!r}: global_blur and global_solarize need one value per global crop")
    globals_ = tuple(
        _view(_name, image_size, {**_as_tuples(view_options), "scale": tuple(global_scale),
                                  "blur_probability": blur, "solarize_probability": solarize}, {})
        for blur, solarize in zip(global_blur, global_solarize))
    local = _view(_name, local_size, {**_as_tuples(view_options), "scale": tuple(local_scale),
                                      "blur_probability": local_blur}, {})
    return validate_recipe(Recipe(name=_name, views=globals_ + (local,) * local_crops))


def dino_recipe(image_size: int = 224, local_crops: int = 8, local_size: int = 96,
                global_scale: tuple[float, float] = (0.4, 1.0),
                local_scale: tuple[float, float] = (0.05, 0.4),
                global_blur: tuple[float, float] = (1.0, 0.1),
                global_solarize: tuple[float, float] = (0.0, 0.2), local_blur: float = 0.5,
                **view_options) -> Recipe:
    """DINO's multi-crop (Caron et al. 2021): 2 x 224 (0.4-1) + 8 x 96 (0.05-0.4)."""
    return multicrop_recipe(image_size, local_crops, local_size, global_scale, local_scale, global_blur,
                            global_solarize, local_blur, _name="dino", **view_options)


def swav_recipe(image_size: int = 224, local_crops: int = 6, local_size: int = 96,
                global_scale: tuple[float, float] = (0.14, 1.0),
                local_scale: tuple[float, float] = (0.05, 0.14),
                global_blur: tuple[float, float] = (0.5, 0.5),
                global_solarize: tuple[float, float] = (0.0, 0.0), local_blur: float = 0.5,
                **view_options) -> Recipe:
    """SwAV's multi-crop (Caron et al. 2020): 2 x 224 (0.14-1) + 6 x 96 (0.05-0.14), blur p=0.5
    on every crop, no solarization."""
    return multicrop_recipe(image_size, local_crops, local_size, global_scale, local_scale, global_blur,
                            global_solarize, local_blur, _name="swav", **view_options)


def rotation_recipe(image_size: int = 224, mode: Literal["all", "one"] = "all", **view_options) -> Recipe:
    """RotNet (Gidaris et al. 2018): crop + flip, then 0/90/180/270 degrees (RotationSpec)."""
    view = _view("rotation", image_size, {**PLAIN_VIEW, "scale": (0.25, 1.0)}, view_options)
    return validate_recipe(Recipe(name="rotation", views=(view,), pretext=RotationSpec(mode=mode)))


def jigsaw_recipe(image_size: int = 225, tile_size: int | None = None, permutation_count: int = 100,
                  permutation_seed: int = 0, permutations_file: str | None = None,
                  random_tile_position: bool = True, tile_jitter_probability: float = 0.8,
                  tile_grayscale_probability: float = 0.3, tile_normalization: bool = True,
                  **view_options) -> Recipe:
    """Jigsaw (Noroozi & Favaro 2016): a 225 crop, 3 x 3 cells of 75, tiles of 64 (JigsawSpec)."""
    tile_size = tile_size if tile_size is not None else max(4, (image_size // 3) * 64 // 75)
    spec = JigsawSpec(tile_size=tile_size, permutation_count=permutation_count,
                      permutation_seed=permutation_seed, permutations_file=permutations_file,
                      random_tile_position=random_tile_position,
                      jitter_probability=tile_jitter_probability,
                      grayscale_probability=tile_grayscale_probability,
                      tile_normalization=tile_normalization)
    view = _view("jigsaw", image_size, {**PLAIN_VIEW, "scale": (0.3, 1.0)}, view_options)
    return validate_recipe(Recipe(name="jigsaw", views=(view,), pretext=spec))


def relative_location_recipe(image_size: int = 225, patch_size: int | None = None,
                             jitter: int | None = None, color_dropping: float = 1.0,
                             **view_options) -> Recipe:
    """Context prediction (Doersch et al. 2015): patch = 2/3 of a cell (96 of 144 in the paper,
    the rest is the gap), jitter 7.5% of the patch (RelativeLocationSpec). The grid covers most
    of the image (crop scale 0.8-1; the paper samples it from the whole resized image): zoomed-in
    crops leave patches of flat colour whose positions cannot be told apart."""
    cell = image_size // 3
    patch_size = patch_size if patch_size is not None else max(4, round(cell * 2 / 3))
    if jitter is None:
        jitter = max(0, min((cell - patch_size) // 2, round(patch_size * 0.075)))
    spec = RelativeLocationSpec(patch_size=patch_size, jitter=jitter, color_dropping=color_dropping)
    view = _view("relative_location", image_size, {**PLAIN_VIEW, "scale": (0.8, 1.0)}, view_options)
    return validate_recipe(Recipe(name="relative_location", views=(view,), pretext=spec))


def _masked(name: str, image_size: int, mask: MaskSpec, defaults: dict, view_options: dict) -> Recipe:
    view = _view(name, image_size, {**PLAIN_VIEW, **defaults}, view_options)
    return validate_recipe(Recipe(name=name, views=(view,), pretext=mask))


def mae_recipe(image_size: int = 224, mask_kind: Literal["random", "block"] = "random", mask_ratio: float = 0.75,
               patch_size: int = 16, min_block_patches: int = 16,
               block_aspect: tuple[float, float] = (0.3, 1 / 0.3), **view_options) -> Recipe:
    """MAE (He et al. 2022): crop scale 0.2-1 + flip, exactly 75% of 16 px patches masked."""
    mask = MaskSpec(mask_kind, mask_ratio, patch_size, min_block_patches, tuple(block_aspect))
    return _masked("mae", image_size, mask, {"scale": (0.2, 1.0)}, view_options)


def simmim_recipe(image_size: int = 192, mask_kind: Literal["random", "block"] = "random", mask_ratio: float = 0.6,
                  patch_size: int = 32, min_block_patches: int = 16,
                  block_aspect: tuple[float, float] = (0.3, 1 / 0.3), **view_options) -> Recipe:
    """SimMIM (Xie et al. 2022): crop scale 0.67-1 + flip, 60% of 32 px mask cells."""
    mask = MaskSpec(mask_kind, mask_ratio, patch_size, min_block_patches, tuple(block_aspect))
    return _masked("simmim", image_size, mask, {"scale": (0.67, 1.0)}, view_options)


def beit_recipe(image_size: int = 224, mask_kind: Literal["random", "block"] = "block", mask_ratio: float = 0.4,
                patch_size: int = 16, min_block_patches: int = 16,
                block_aspect: tuple[float, float] = (0.3, 1 / 0.3), **view_options) -> Recipe:
    """BEiT (Bao et al. 2022): block-wise masks of about 40% of 16 px patches."""
    mask = MaskSpec(mask_kind, mask_ratio, patch_size, min_block_patches, tuple(block_aspect))
    return _masked("beit", image_size, mask, {"scale": (0.08, 1.0)}, view_options)


def dvae_recipe(image_size: int = 224, **view_options) -> Recipe:
    """BEiT's tokenizer (DALL-E's dVAE, Ramesh et al. 2021): the `beit` recipe's crops and flips."""
    view = _view("dvae", image_size, {**PLAIN_VIEW, "scale": (0.08, 1.0)}, view_options)
    return validate_recipe(Recipe(name="dvae", views=(view,)))


def colorization_recipe(image_size: int = 224, bin_downsample: int = 4, **view_options) -> Recipe:
    """Colorization (Zhang et al. 2016): crop + flip, no colour jitter (ColorizationSpec)."""
    view = _view("colorization", image_size, {**PLAIN_VIEW, "scale": (0.3, 1.0)}, view_options)
    return validate_recipe(Recipe(name="colorization", views=(view,),
                                  pretext=ColorizationSpec(bin_downsample=bin_downsample)))


def inpainting_recipe(image_size: int = 128, region: Literal["center", "random"] = "center",
                      region_fraction: float = 0.5, **view_options) -> Recipe:
    """Context encoders (Pathak et al. 2016): the central (or a random) half-side square removed."""
    view = _view("inpainting", image_size, {**PLAIN_VIEW, "scale": (0.3, 1.0)}, view_options)
    spec = InpaintingSpec(region=region, region_fraction=region_fraction)
    return validate_recipe(Recipe(name="inpainting", views=(view,), pretext=spec))


def super_resolution_recipe(image_size: int = 96, scale_factor: int = 4, **view_options) -> Recipe:
    """SRGAN (Ledig et al. 2017): a 96 px high-resolution crop + flip and its x4 bicubic downscale,
    upscaled back for the network (SuperResolutionSpec)."""
    view = _view("super_resolution", image_size, {**PLAIN_VIEW, "scale": (0.3, 1.0)}, view_options)
    return validate_recipe(Recipe(name="super_resolution", views=(view,),
                                  pretext=SuperResolutionSpec(scale_factor=scale_factor)))


def denoising_recipe(image_size: int = 128, corruption: Literal["gaussian", "masking"] = "masking",
                     noise_std: float = 0.2, drop_probability: float = 0.25, **view_options) -> Recipe:
    """Denoising autoencoders (Vincent et al. 2008): crop + flip, then 25% of the pixels dropped
    (masking noise) or Gaussian noise added (DenoisingSpec)."""
    view = _view("denoising", image_size, {**PLAIN_VIEW, "scale": (0.3, 1.0)}, view_options)
    spec = DenoisingSpec(corruption=corruption, noise_std=noise_std, drop_probability=drop_probability)
    return validate_recipe(Recipe(name="denoising", views=(view,), pretext=spec))


RECIPES = {
    "simclr": simclr_recipe,
    "two_views": two_views_recipe,
    "supervised": simclr_recipe,  # the same views; the loader adds `label` for a labeled dataset
    "byol": byol_recipe,
    "barlow_twins": byol_recipe,
    "vicreg": byol_recipe,
    "multicrop": multicrop_recipe,
    "dino": dino_recipe,
    "swav": swav_recipe,
    "deepcluster": deepcluster_recipe,
    "rotation": rotation_recipe,
    "jigsaw": jigsaw_recipe,
    "relative_location": relative_location_recipe,
    "mae": mae_recipe,
    "simmim": simmim_recipe,
    "beit": beit_recipe,
    "dvae": dvae_recipe,
    "colorization": colorization_recipe,
    "inpainting": inpainting_recipe,
    "super_resolution": super_resolution_recipe,
    "denoising": denoising_recipe,
}


@functools.cache
def recipe_options_type(name: str) -> type:
    """The options of recipe `name` as a dataclass: its builder's parameters (but `image_size`) with
    their annotations and defaults, then, for a builder that takes view options, every `ViewSpec`
    field but `size` (and the per-crop ones of a multi-crop recipe) as `T | None`, None meaning the
    recipe's own default. Raises RecipeError for an unknown name."""
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    builder = RECIPES[name]
    hints = typing.get_type_hints(builder)
    parameters = inspect.signature(builder).parameters.values()
    fields = [(p.name, hints[p.name], dataclasses.field(default=p.default)) for p in parameters
              if p.kind is not p.VAR_KEYWORD and p.name != "image_size" and not p.name.startswith("_")]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        view_hints = typing.get_type_hints(ViewSpec)
        per_crop = PER_CROP_VIEW_OPTIONS if "global_scale" in hints else ()
        fields += [(option, Optional[view_hints[option]], dataclasses.field(default=None))
                   for option in VIEW_OPTIONS if option not in per_crop and option not in hints]
    title = "".join(part.title() for part in name.split("_"))
    return dataclasses.make_dataclass(f"{title}RecipeOptions", fields, frozen=True)


def recipe_options(name: str) -> list[str]:
    """The option names `build_recipe(name, ...)` accepts, sorted."""
    return sorted(field.name for field in dataclasses.fields(recipe_options_type(name)))


def build_recipe(name: str, image_size: int, **options) -> Recipe:
    """Look a recipe up by name; an unknown name or option lists the known ones. An option given
    as None takes the recipe's default (as in `recipe_options_type`)."""
    known = recipe_options(name)
    unknown = set(options) - set(known)
    if unknown:
        raise RecipeError(f"recipe {name!r}: unknown option(s) {sorted(unknown)}; valid options: {known}")
    given = {key: value for key, value in options.items() if value is not None}
    try:
        recipe = RECIPES[name](image_size=image_size, **_as_tuples(given))
    except TypeError as error:
        raise RecipeError(f"recipe {name!r}: {error}") from error
    return recipe if recipe.name == name else dataclasses.replace(recipe, name=name)


__all__ = [
    "EvalRecipe", "Recipe", "RecipeError", "ViewSpec", "RECIPES", "build_recipe", "recipe_options",
    "recipe_options_type", "simclr_recipe", "two_views_recipe", "byol_recipe", "multicrop_recipe",
    "dino_recipe", "swav_recipe", "rotation_recipe", "jigsaw_recipe", "relative_location_recipe",
    "mae_recipe", "simmim_recipe", "beit_recipe", "dvae_recipe", "colorization_recipe", "inpainting_recipe",
    "super_resolution_recipe", "denoising_recipe", "deepcluster_recipe", "validate_recipe",
]
