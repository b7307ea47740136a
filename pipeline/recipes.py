"""View recipes: what a method asks the data pipeline for, declared as data.

A recipe names the views a method needs (how many crops, their size and scale, which colour,
blur and solarize augmentations with which probabilities) and the labels that travel with them.
`pipeline.loader` turns a recipe into one DALI graph; nothing in here imports DALI, so a recipe
can be built, validated and printed anywhere.

Defaults follow the SimCLR paper (Chen et al. 2020, appendix A): random resized crop with scale
0.08-1 and aspect 3/4-4/3, horizontal flip, colour jitter (0.4, 0.4, 0.2, 0.1) applied with
p=0.8, grayscale with p=0.2 and Gaussian blur with sigma in [0.1, 2.0].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RecipeError(ValueError):
    """A recipe that cannot be built: names the recipe, the field and what was expected."""


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
    """A method's inputs: a tuple of views, plus whether the class label travels with them."""

    name: str
    views: tuple[ViewSpec, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    with_label: bool = True


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
    return recipe


def simclr_recipe(image_size: int = 224, solarize_probability: float = 0.0, **view_options) -> Recipe:
    """SimCLR's two identically distributed views (Chen et al. 2020)."""
    view = ViewSpec(size=image_size, solarize_probability=solarize_probability, **view_options)
    return validate_recipe(Recipe(name="simclr", views=(view, view)))


RECIPES = {
    "simclr": simclr_recipe,
}


def build_recipe(name: str, image_size: int, **options) -> Recipe:
    """Look a recipe up by name; an unknown name or option lists the known ones."""
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    known = {f.name for f in dataclasses.fields(ViewSpec)} | {"solarize_probability"}
    unknown = set(options) - known
    if unknown:
        raise RecipeError(
            f"recipe {name!r}: unknown option(s) {sorted(unknown)}; valid options: {sorted(known - {'size'})}"
        )
    return RECIPES[name](image_size=image_size, **options)


def describe(recipe: Recipe) -> str:
    """One line per view, for logs."""
    lines = [f"recipe {recipe.name}: {len(recipe.views)} view(s)"]
    for index, view in enumerate(recipe.views):
        lines.append(f"  view_{index}: {view}")
    return "\n".join(lines)


__all__ = [
    "EvalRecipe", "Recipe", "RecipeError", "ViewSpec", "RECIPES", "build_recipe", "describe",
    "simclr_recipe", "validate_recipe",
]
