"""DALI operations for the pretext tasks: rotations, jigsaw tiles, relative patches, Lab, inpainting,
super-resolution pairs and denoising corruption.

Like `pipeline.augment`, each function takes and returns DALI data nodes and is called while a
pipeline (with `enable_conditionals=True`) is being defined; images come in as uint8 HWC (on the
CPU or the GPU) and leave as float32 CHW. Random choices (rotation, permutation, tile and patch
positions, kept channel, region) are drawn per sample with `fn.random`, so the pipeline seed
reproduces them. Integer positions are exact: tiles and patches are cut with `fn.slice` at
integer anchors, rotations are transposes and flips.
"""

from __future__ import annotations

import numpy as np
import nvidia.dali.math as dali_math
from nvidia.dali import fn, types

from selfsup.pipeline.augment import color_jitter
from selfsup.pipeline.lab import BIN_SIZE, DELTA, GRID_LIMIT, GRID_SIDE, RGB_TO_XYZ, WHITE_D65, grid_to_bin
from selfsup.pipeline.pretext import (
    JIGSAW_GRID, ColorizationSpec, DenoisingSpec, InpaintingSpec, JigsawSpec, RelativeLocationSpec,
    SuperResolutionSpec,
)
from selfsup.pipeline.recipes import ViewSpec

DROPPED_CHANNEL_NOISE = 0.01  # x the std of a normalized channel (Doersch et al. 2015, section 4)


def on_device_of(node, reference):
    """Move a CPU node to the GPU when `reference` lives there (DALI ops want one device)."""
    return node.gpu() if reference.device == "gpu" and node.device == "cpu" else node


def random_integer(low: int, high: int):
    """One int32 per sample, uniform in [low, high).

    (An integer `range` in fn.random.uniform rounds a continuous draw, which gives the two end
    values half the weight; a list of `values` is exactly uniform.)
    """
    if high - low <= 65536:
        return fn.random.uniform(values=list(range(low, high)), dtype=types.INT32)
    draw = fn.random.uniform(range=[0.0, 1.0], dtype=types.FLOAT64) * float(high - low)
    return fn.cast(dali_math.floor(draw) + float(low), dtype=types.INT32)


def random_flip(images, probability: float):
    """Horizontal flip of uint8 HWC images with p=probability (before any rotation)."""
    if probability == 0.0:
        return images
    return fn.flip(images, horizontal=fn.random.coin_flip(probability=probability, dtype=types.INT32))


def normalize_chw(images, mean, std):
    """uint8 HWC -> float32 CHW normalized by mean/std (given in [0, 1]); no flip."""
    return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                    mean=[255.0 * m for m in mean], std=[255.0 * s for s in std])


def rotate_quarter_turns(images, turns):
    """uint8 HWC square images, turns (int32 per sample) -> np.rot90(images, turns): counter-clockwise.

    rot90 = transpose then flip vertically; 180 = flip both ways; 270 = transpose then flip
    horizontally. Exact: no interpolation.
    """
    if turns % 2 == 1:
        images = fn.transpose(images, perm=[1, 0, 2], transpose_layout=False)
    horizontal = fn.cast((turns == 2) | (turns == 3), dtype=types.INT32)
    vertical = fn.cast((turns == 1) | (turns == 2), dtype=types.INT32)
    return fn.flip(images, horizontal=horizontal, vertical=vertical)


def all_rotations(images, mean, std):
    """uint8 HWC square -> (4, 3, S, S) float32: the image turned by 0, 90, 180 and 270 degrees."""
    transposed = fn.transpose(images, perm=[1, 0, 2], transpose_layout=False)
    turned = (images, fn.flip(transposed, horizontal=0, vertical=1), fn.flip(images, horizontal=1, vertical=1),
              fn.flip(transposed, horizontal=1, vertical=0))
    return fn.stack(*[normalize_chw(image, mean, std) for image in turned], axis=0)


def _cell_anchor(cell_index, cell: int, offset_y, offset_x):
    """Cell index (reading order in a 3 x 3 grid) + offsets inside the cell -> int32 [y, x]."""
    row, column = cell_index // JIGSAW_GRID, cell_index % JIGSAW_GRID
    return fn.cast(fn.stack(row * cell + offset_y, column * cell + offset_x), dtype=types.INT32)


def _cut(images, anchor, size: int):
    """A size x size patch of uint8 HWC images at the integer [y, x] anchor."""
    return fn.slice(images, anchor, types.Constant(np.array([size, size], dtype=np.int32)), axes=[0, 1],
                    normalized_anchor=False, normalized_shape=False, out_of_bounds_policy="error")


def jigsaw_view(images, view_size: int, spec: JigsawSpec, permutations: np.ndarray, mean, std):
    """uint8 HWC (view_size^2) -> (tiles (9, 3, t, t) float32, label int32 in 0..K-1).

    Tile i shows grid cell permutations[label][i]; each tile has its own colour draw and, with
    `spec.tile_normalization`, its own per-channel standardization.
    """
    cell, size = view_size // JIGSAW_GRID, spec.tile_size
    label = random_integer(0, len(permutations))
    keys = list(range(len(permutations)))
    tile_colour = ViewSpec(jitter_probability=spec.jitter_probability, brightness=spec.brightness,
                           contrast=spec.contrast, saturation=spec.saturation, hue=spec.hue,
                           grayscale_probability=spec.grayscale_probability)
    tiles = []
    for position in range(JIGSAW_GRID * JIGSAW_GRID):
        source = fn.lookup_table(label, keys=keys, values=[int(v) for v in permutations[:, position]],
                                 dtype=types.INT32)  # the cell shown at this position
        if spec.random_tile_position and cell > size:  # gap + jitter: anywhere inside the cell
            offset_y, offset_x = random_integer(0, cell - size + 1), random_integer(0, cell - size + 1)
        else:
            offset_y = offset_x = (cell - size) // 2
        tile = color_jitter(_cut(images, _cell_anchor(source, cell, offset_y, offset_x), size), tile_colour)
        if spec.tile_normalization:
            tile = fn.normalize(fn.cast(tile, dtype=types.FLOAT), axes=[0, 1], epsilon=1.0)
            tile = fn.transpose(tile, perm=[2, 0, 1], output_layout="CHW")
        else:
            tile = normalize_chw(tile, mean, std)
        tiles.append(tile)
    return fn.stack(*tiles, axis=0), label


def drop_colour(patch, probability: float):
    """Colour dropping on a normalized CHW patch: keep one random channel, replace the other two
    with Gaussian noise (std DROPPED_CHANNEL_NOISE), with p=probability."""
    if probability == 0.0:
        return patch
    keep = random_integer(0, 3)
    kept = types.Constant(np.arange(3, dtype=np.int32).reshape(3, 1, 1)) == keep  # (3, 1, 1) bool
    if probability < 1.0:
        kept = kept | (fn.random.coin_flip(probability=1.0 - probability, dtype=types.INT32) == 1)
    kept = on_device_of(fn.cast(kept, dtype=types.FLOAT), patch)
    noise = fn.random.normal(patch) * DROPPED_CHANNEL_NOISE
    return patch * kept + noise * (1.0 - kept)


def relative_patches(images, view_size: int, spec: RelativeLocationSpec, mean, std):
    """uint8 HWC -> (patch_a, patch_b (3, p, p) float32, label int32 in 0..7)."""
    cell, size, jitter = view_size // 3, spec.patch_size, spec.jitter
    label = random_integer(0, 8)
    neighbour = label + fn.cast(label >= 4, dtype=types.INT32)  # skip the centre cell (4)

    def patch(cell_index):
        centre = (cell - size) // 2
        offset_y = centre + random_integer(-jitter, jitter + 1)
        offset_x = centre + random_integer(-jitter, jitter + 1)
        cut = _cut(images, _cell_anchor(cell_index, cell, offset_y, offset_x), size)
        return drop_colour(normalize_chw(cut, mean, std), spec.color_dropping)

    return patch(4), patch(neighbour), label


def _select(condition, if_true, if_false):
    """Elementwise condition ? if_true : if_false, with DALI arithmetic."""
    condition = fn.cast(condition, dtype=types.FLOAT)
    return condition * if_true + (1.0 - condition) * if_false


def srgb_to_lab(images):
    """uint8 HWC sRGB -> (L, a, b), each float32 HW (the formulas in `pipeline.lab`)."""
    rgb = fn.cast(images, dtype=types.FLOAT) * (1.0 / 255.0)
    channels = [rgb[:, :, index] for index in range(3)]
    linear = [_select(c > 0.04045, dali_math.pow((c + 0.055) * (1.0 / 1.055), 2.4), c * (1.0 / 12.92))
              for c in channels]
    xyz = [(row[0] * linear[0] + row[1] * linear[1] + row[2] * linear[2]) * (1.0 / white)
           for row, white in zip(RGB_TO_XYZ, WHITE_D65)]
    f = [_select(t > DELTA ** 3, dali_math.cbrt(t), t * (1.0 / (3 * DELTA ** 2)) + 4.0 / 29.0) for t in xyz]
    return 116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])


def quantize_ab(a, b):
    """float HW a and b -> int32 HW index of the nearest in-gamut bin (`pipeline.lab.ab_to_bins`)."""
    def cell(value):
        index = dali_math.floor(value * (1.0 / BIN_SIZE) + 0.5) + float(GRID_LIMIT // BIN_SIZE)
        return dali_math.clamp(index, 0.0, float(GRID_SIDE - 1))

    grid = fn.cast(cell(a) * float(GRID_SIDE) + cell(b), dtype=types.INT32)
    table = grid_to_bin()
    return fn.lookup_table(grid, keys=list(range(len(table))), values=[int(v) for v in table],
                           dtype=types.INT32)


def colorization_targets(images, view_size: int, spec: ColorizationSpec):
    """uint8 HWC -> (lab_l (1, S, S) = L - 50, ab_target (2, S, S), ab_bins (S/d, S/d) int32)."""
    lightness, a, b = srgb_to_lab(images)
    lab_l = fn.expand_dims(lightness - 50.0, axes=[0], new_axis_names="C")
    ab_target = fn.stack(a, b, axis=0)
    if spec.bin_downsample > 1:
        small = view_size // spec.bin_downsample
        ab = fn.reshape(fn.stack(a, b, axis=2), layout="HWC")
        ab = fn.resize(ab, size=[small, small], interp_type=types.INTERP_LINEAR, antialias=True)
        a, b = ab[:, :, 0], ab[:, :, 1]
    return lab_l, ab_target, quantize_ab(a, b)


def inpainting_views(images, view_size: int, spec: InpaintingSpec, mean, std):
    """uint8 HWC -> (input, target (3, S, S) float32, anchor int32 [y, x] of the removed square)."""
    target = normalize_chw(images, mean, std)
    side = region_side(view_size, spec)
    if spec.region == "center":
        low = high = (view_size - side) // 2
    else:
        low, high = 0, view_size - side
    anchor = fn.stack(random_integer(low, high + 1), random_integer(low, high + 1))
    erased = fn.erase(target, anchor=fn.cast(anchor, dtype=types.FLOAT), shape=[float(side), float(side)],
                      axis_names="HW", fill_value=0.0)  # 0 = the normalization mean
    return erased, target, anchor


def region_side(view_size: int, spec: InpaintingSpec) -> int:
    """The removed square's side in pixels."""
    return max(1, round(spec.region_fraction * view_size))


def super_resolution_views(images, view_size: int, spec: SuperResolutionSpec, mean, std):
    """uint8 HWC (S x S) -> (input, target (3, S, S) float32): the view downscaled by the scale factor
    (bicubic, antialiased, rounded to uint8), upscaled back to S (bicubic), and the view itself."""
    small = view_size // spec.scale_factor
    low = fn.resize(images, size=[small, small], interp_type=types.INTERP_CUBIC, antialias=True)
    upscaled = fn.resize(low, size=[view_size, view_size], interp_type=types.INTERP_CUBIC, antialias=False)
    return normalize_chw(upscaled, mean, std), normalize_chw(images, mean, std)


def denoising_views(images, view_size: int, spec: DenoisingSpec, mean, std):
    """uint8 HWC -> (corrupted, clean (3, S, S) float32): masking noise (pixels set to the mean with
    p=drop_probability) or additive Gaussian noise (std noise_std of the pixel range), per sample."""
    clean = normalize_chw(images, mean, std)
    if spec.corruption == "masking":
        kept = fn.random.coin_flip(probability=1.0 - spec.drop_probability, shape=[1, view_size, view_size],
                                   dtype=types.UINT8)  # (1, S, S): the three channels of a pixel together
        return clean * on_device_of(fn.cast(kept, dtype=types.FLOAT), clean), clean
    per_channel = types.Constant(np.array([spec.noise_std / s for s in std], dtype=np.float32).reshape(3, 1, 1))
    return clean + fn.random.normal(clean) * per_channel, clean
