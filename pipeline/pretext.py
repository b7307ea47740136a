"""Pretext-task declarations: which labels a recipe asks the graph to draw, as small frozen dataclasses.

A `Recipe` (pipeline.recipes) carries at most one of these in its `pretext` field. Like the
recipes, nothing here imports DALI: a declaration can be built, validated and printed anywhere.
Each spec's docstring names the batch keys it adds; `pipeline.graph` turns it into DALI ops.
"""

from __future__ import annotations

from dataclasses import dataclass

ROTATION_MODES = ("all", "one")
MASK_KINDS = ("random", "block")
INPAINTING_REGIONS = ("center", "random")
CORRUPTIONS = ("gaussian", "masking")
JIGSAW_GRID = 3  # 3 x 3 tiles (Noroozi & Favaro 2016)
RELATIVE_GRID = 3  # a centre patch and its 8 neighbours (Doersch et al. 2015)


@dataclass(frozen=True)
class RotationSpec:
    """RotNet (Gidaris et al. 2018): rotate the view by k x 90 degrees counter-clockwise (np.rot90).

    mode "all": every image in all four rotations -> `view_0` (B, 4, 3, S, S), `rotation_label`
    (B, 4) = [0, 1, 2, 3] per row. mode "one": one random k per image -> `view_0` (B, 3, S, S),
    `rotation_label` (B,) int64 in 0..3. The flip happens before the rotation, so undoing the
    rotation (np.rot90(view, -k)) brings the image upright again.
    """

    mode: str = "all"


@dataclass(frozen=True)
class JigsawSpec:
    """Jigsaw puzzles (Noroozi & Favaro 2016).

    The view (S x S, S divisible by 3) is cut into a 3 x 3 grid of cells of S/3 pixels; a tile of
    `tile_size` pixels is taken inside each cell, at a random place when `random_tile_position`
    (gap + jitter), else centred. Every tile gets its own colour jitter / grayscale draw and, with
    `tile_normalization`, is standardized by its own per-channel mean and std (against
    chromatic-aberration and low-level-statistics shortcuts).

    The permutation is drawn per sample from a fixed set of `permutation_count` permutations of 9
    chosen greedily for maximal Hamming distance (`pipeline.permutations.jigsaw_permutations(
    permutation_count, permutation_seed)`), or read from `permutations_file` (.npy, (K, 9)).

    Batch keys: `jigsaw_tiles` (B, 9, 3, t, t) float32, where tile i shows grid cell
    permutations[label][i] (cells in reading order); `jigsaw_label` (B,) int64 in 0..K-1.
    """

    tile_size: int
    permutation_count: int = 100
    permutation_seed: int = 0
    permutations_file: str | None = None
    random_tile_position: bool = True
    jitter_probability: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_probability: float = 0.3
    tile_normalization: bool = True


@dataclass(frozen=True)
class RelativeLocationSpec:
    """Context prediction (Doersch, Gupta & Efros 2015).

    The view (S x S) is a 3 x 3 grid of cells of S // 3 pixels. `patch_a` is a `patch_size` patch
    in the centre cell, `patch_b` one in the neighbour cell given by the label (0 top-left,
    1 top, 2 top-right, 3 left, 4 right, 5 bottom-left, 6 bottom, 7 bottom-right); each patch is
    centred in its cell (the gap is cell - patch_size) and moved by up to `jitter` pixels.
    Colour dropping (probability `color_dropping`, per patch): one random channel is kept and
    the other two are replaced by Gaussian noise with 1/100 of a normalized channel's std.

    Batch keys: `patch_a`, `patch_b` (B, 3, p, p) float32; `relative_label` (B,) int64 in 0..7.
    """

    patch_size: int
    jitter: int = 0
    color_dropping: float = 1.0


@dataclass(frozen=True)
class MaskSpec:
    """Patch masks on the view's grid of (S / patch_size)^2 = N patches, True = masked.

    kind "random" (MAE, He et al. 2022; SimMIM, Xie et al. 2022): exactly round(ratio x N)
    patches per sample. kind "block" (BEiT, Bao et al. 2022): rectangles of at least
    `min_block_patches` patches, aspect in `block_aspect`, added until about ratio x N (never more).

    Batch key: `mask` (B, N) bool, patches in reading order.
    """

    kind: str = "random"
    ratio: float = 0.75
    patch_size: int = 16
    min_block_patches: int = 16
    block_aspect: tuple[float, float] = (0.3, 1 / 0.3)


@dataclass(frozen=True)
class ColorizationSpec:
    """Colorization (Zhang, Isola & Efros 2016) in CIE Lab (D65).

    Batch keys: `lab_l` (B, 1, S, S) float32, L - 50 (L in [0, 100]); `ab_target` (B, 2, S, S)
    float32, a and b; `ab_bins` (B, S/d, S/d) int64, the index of the in-gamut ab bin (grid 10,
    `pipeline.lab.in_gamut_bins()`) nearest to the ab of the view resized by 1/`bin_downsample`.
    """

    bin_downsample: int = 4


@dataclass(frozen=True)
class InpaintingSpec:
    """Context encoders (Pathak et al. 2016): a square region of side `region_fraction` x S is
    removed, at the centre (`region="center"`) or at a random place, and filled with the mean
    (0 after normalization).

    Batch keys: `inpaint_input` (B, 3, S, S) float32; `inpaint_target` (B, 3, S, S), the
    untouched view; `inpaint_mask` (B, 1, S, S) bool, True inside the removed region.
    """

    region: str = "center"
    region_fraction: float = 0.5


@dataclass(frozen=True)
class SuperResolutionSpec:
    """Super-resolution pairs (SRGAN, Ledig et al. 2017): the view is the high-resolution target;
    the input is the view downscaled by `scale_factor` with antialiased bicubic interpolation
    (the paper's "bicubic kernel with downsampling factor r"), kept in 8 bits as a stored image
    would be, and upscaled back to the view's size with bicubic interpolation, so that the
    network reads images at the scale evaluation shows it (see `methods.super_resolution`).

    Batch keys: `sr_input` (B, 3, S, S) float32, the upscaled low-resolution view;
    `sr_target` (B, 3, S, S) float32, the view. Both normalized by the recipe's mean and std.
    """

    scale_factor: int = 4


@dataclass(frozen=True)
class DenoisingSpec:
    """Denoising autoencoder corruption (Vincent et al. 2008), drawn per sample in the graph.

    corruption "masking" (the paper's masking noise): every pixel is dropped, all three channels
    set to the mean (0 after normalization), with probability `drop_probability`, independently.
    corruption "gaussian": additive isotropic Gaussian noise of standard deviation `noise_std`
    in units of the [0, 1] pixel range (not clipped), on every pixel and channel.

    Batch keys: `denoise_input` (B, 3, S, S) float32, the corrupted view; `denoise_target`
    (B, 3, S, S) float32, the clean view. Both normalized by the recipe's mean and std.
    """

    corruption: str = "masking"
    noise_std: float = 0.2
    drop_probability: float = 0.25


PretextSpec = (RotationSpec | JigsawSpec | RelativeLocationSpec | MaskSpec | ColorizationSpec | InpaintingSpec
               | SuperResolutionSpec | DenoisingSpec)
PRETEXT_SPECS = (RotationSpec, JigsawSpec, RelativeLocationSpec, MaskSpec, ColorizationSpec, InpaintingSpec,
                 SuperResolutionSpec, DenoisingSpec)


def pretext_problems(spec: PretextSpec, view_size: int) -> list[str]:
    """What is wrong with `spec` for a view of `view_size` pixels: one message per problem."""
    problems = []
    if isinstance(spec, RotationSpec):
        if spec.mode not in ROTATION_MODES:
            problems.append(f"mode={spec.mode!r} must be one of {ROTATION_MODES}")
    elif isinstance(spec, JigsawSpec):
        cell = view_size // JIGSAW_GRID
        if view_size % JIGSAW_GRID:
            problems.append(f"image_size={view_size} must be divisible by {JIGSAW_GRID} for a jigsaw grid")
        if not isinstance(spec.tile_size, int) or not 4 <= spec.tile_size <= cell:
            problems.append(f"tile_size={spec.tile_size!r} must be an integer in [4, {cell}] (the cell size)")
        if spec.permutations_file is None and not 2 <= spec.permutation_count <= 5000:
            problems.append(f"permutation_count={spec.permutation_count!r} must be in [2, 5000]")
        for name in ("jitter_probability", "grayscale_probability"):
            if not 0.0 <= getattr(spec, name) <= 1.0:
                problems.append(f"{name}={getattr(spec, name)!r} must be a probability in [0, 1]")
    elif isinstance(spec, RelativeLocationSpec):
        cell = view_size // RELATIVE_GRID
        if not isinstance(spec.patch_size, int) or spec.patch_size < 4:
            problems.append(f"patch_size={spec.patch_size!r} must be an integer >= 4")
        elif spec.jitter < 0 or spec.patch_size + 2 * spec.jitter > cell:
            problems.append(f"patch_size + 2 x jitter = {spec.patch_size + 2 * spec.jitter} must fit the "
                            f"cell of {cell} pixels (image_size // 3) and jitter must be >= 0")
        if not 0.0 <= spec.color_dropping <= 1.0:
            problems.append(f"color_dropping={spec.color_dropping!r} must be a probability in [0, 1]")
    elif isinstance(spec, MaskSpec):
        if spec.kind not in MASK_KINDS:
            problems.append(f"kind={spec.kind!r} must be one of {MASK_KINDS}")
        if not 0.0 < spec.ratio < 1.0:
            problems.append(f"mask_ratio={spec.ratio!r} must be in (0, 1)")
        if spec.patch_size < 1 or view_size % spec.patch_size:
            problems.append(f"patch_size={spec.patch_size!r} must divide image_size={view_size}")
        if spec.min_block_patches < 1 or not 0 < spec.block_aspect[0] <= spec.block_aspect[1]:
            problems.append("min_block_patches must be >= 1 and block_aspect (min, max) positive")
    elif isinstance(spec, ColorizationSpec):
        if spec.bin_downsample < 1 or view_size % spec.bin_downsample:
            problems.append(f"bin_downsample={spec.bin_downsample!r} must divide image_size={view_size}")
    elif isinstance(spec, InpaintingSpec):
        if spec.region not in INPAINTING_REGIONS:
            problems.append(f"region={spec.region!r} must be one of {INPAINTING_REGIONS}")
        if not 0.0 < spec.region_fraction < 1.0:
            problems.append(f"region_fraction={spec.region_fraction!r} must be in (0, 1)")
    elif isinstance(spec, SuperResolutionSpec):
        if not isinstance(spec.scale_factor, int) or spec.scale_factor < 2 or view_size % spec.scale_factor:
            problems.append(f"scale_factor={spec.scale_factor!r} must be an integer >= 2 that divides "
                            f"image_size={view_size}")
    elif isinstance(spec, DenoisingSpec):
        if spec.corruption not in CORRUPTIONS:
            problems.append(f"corruption={spec.corruption!r} must be one of {CORRUPTIONS}")
        if not spec.noise_std > 0.0:
            problems.append(f"noise_std={spec.noise_std!r} must be > 0")
        if not 0.0 < spec.drop_probability < 1.0:
            problems.append(f"drop_probability={spec.drop_probability!r} must be in (0, 1)")
    else:
        problems.append(f"pretext must be one of {[kind.__name__ for kind in PRETEXT_SPECS]} or None, "
                        f"got {type(spec).__name__}")
    return problems


__all__ = [
    "ColorizationSpec", "DenoisingSpec", "InpaintingSpec", "JigsawSpec", "MaskSpec", "PRETEXT_SPECS", "PretextSpec",
    "RelativeLocationSpec", "RotationSpec", "SuperResolutionSpec", "pretext_problems",
]
